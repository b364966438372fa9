"""pgha/reply_age.py: a standby's reply age that a skewed clock cannot fake."""
import pytest

from pgha.reply_age import REPLY_INTERVAL, ReplyAges


def poll(ages, now, rows):
    """rows: name -> (reply_time, clock_age); the ages reported."""
    out = {name: ages.age(name, sent, clock_age, now) for name, (sent, clock_age) in rows.items()}
    ages.polled(now, set(rows))
    return out


def test_with_agreeing_clocks_the_clock_age_is_reported():
    ages = ReplyAges()
    assert poll(ages, 10.0, {"s": (1000.0, 0.3)}) == {"s": 0.3}
    assert poll(ages, 10.5, {"s": (1000.0, 0.8)}) == {"s": 0.8}


@pytest.mark.parametrize("skew", [60.0, -60.0, 3600.0])
def test_a_standby_whose_clock_is_off_looks_as_fresh_as_it_is(skew):
    """The primary's clock minus the standby's is `skew`: PostgreSQL's own age is off by it."""
    ages = ReplyAges()
    now, sent = 10.0, 1000.0
    for _ in range(10):          # the standby answers every second, we poll every 0.5 s
        seen = poll(ages, now, {"s": (sent, 0.2 + skew)})["s"]
        assert 0 <= seen <= REPLY_INTERVAL, seen
        now += 0.5
        seen = poll(ages, now, {"s": (sent, 0.7 + skew)})["s"]
        assert 0.5 <= seen <= 0.5 + REPLY_INTERVAL
        now += 0.5
        sent += 1.0


@pytest.mark.parametrize("skew", [60.0, -60.0, 0.0])
def test_a_silent_standby_ages_on_our_clock_whatever_the_skew(skew):
    ages = ReplyAges()
    poll(ages, 10.0, {"s": (999.0, 0.1 + skew)})
    poll(ages, 10.5, {"s": (1000.0, 0.2 + skew)})     # its last answer, sent in the last 0.5 s
    assert poll(ages, 12.5, {"s": (1000.0, 2.2 + skew)})["s"] == pytest.approx(2.2 if skew == 0 else
                                                                             2.0)
    assert poll(ages, 13.0, {"s": (1000.0, 2.7 + skew)})["s"] >= 2.5


def test_a_standby_gone_from_the_list_is_forgotten_and_no_reply_time_is_the_clock_age():
    ages = ReplyAges()
    poll(ages, 10.0, {"s": (1000.0, 0.1)})
    poll(ages, 10.5, {})
    assert poll(ages, 20.0, {"s": (1000.0, 50.0)})["s"] == 0.0   # as if new: its clock disagrees, so seen just now
    assert poll(ages, 20.5, {"s": (None, 1e9)})["s"] == 1e9
