/*
 * pgha's failover protocol for Spin (docs/ha-model.md, "The model checked").
 *
 * N database members (0 starts as primary) and one arbiter. One process:
 * each turn of the loop is one atomic step chosen nondeterministically, so
 * every interleaving of the steps below is explored:
 *   - a node sends a heartbeat (a snapshot of its report), the arbiter
 *     answers it (pgha/decision.py), the node takes the answer
 *     (pgha/node_rules.py); request and reply may be lost, delayed (up to
 *     the request timeout TMO, after which the node gives up on it),
 *     duplicated (the arbiter decides twice on one request); the node only
 *     takes the reply to its one outstanding request (replies are bound to
 *     their request, pgha/auth.py), so replies of different nodes and the
 *     lease link interleave in any order;
 *   - the primary asks each standby for a lease (pgha/lease.py), same faults;
 *   - commits (acknowledged by PostgreSQL's synchronous replication, ANY k
 *     of synchronous_standby_names), streaming, rewind;
 *   - crash and restart of PostgreSQL, of the node daemon (it keeps its
 *     epoch file; its grants and leases in memory are lost), of the arbiter
 *     (it keeps its state file, forgets its memory);
 *   - a tick of time. Leases run on the holder's clock, counted from when
 *     the request was sent; the holder's clock may run slow by one tick in
 *     any L+1 ticks (bounded rate drift); the fencer stops a read-write
 *     PostgreSQL in the tick its last lease runs out (pgha/fencer.py).
 *
 * Switches (-D...): N, K (2 members k=1 is today's protocol), LIVE (the
 * liveness run), planted bugs: BUG_NO_PROMOTABLE, BUG_FENCE_LATE,
 * BUG_FORGET_EPOCH, BUG_NONMEMBER_GRANT, BUG_NO_FAILOVER (liveness),
 * BUG_SHRINK_AT_ONCE, BUG_STALE_POSITIONS (N=3); STALE_ARBITER (compile pan with
 * -DNOCLAIM: the epoch property only); TODAY_GRANTS_AT_RESTART (the node
 * daemon's grant memory as the code has it today, see GRANTS_AT_RESTART).
 */
#ifndef N
#define N 2
#endif
#ifndef K
#define K 1
#endif
#define L 2        /* lease, in ticks (1.8 s) */
#define MARGIN 1   /* failover margin (0.4 s): at least the drift per lease */
#define TAIL 1     /* GRANT_TAIL: a grant is reported this long past its end */
#define TMO 1      /* request timeout (1 s < lease): a later reply is dropped */
#ifndef MAXC
#define MAXC 2     /* commits per run (ghost ids 0..MAXC-1) */
#endif
#ifndef FAULTS
#define FAULTS 2   /* crashes per run (loss, delay, duplication: unbounded) */
#endif
#ifndef NOSYNC
#define NOSYNC 0   /* bitmask of members tagged nosync (never in the set) */
#endif
#define NONE N

#define DOWN 0
#define RW 1       /* running read-write */
#define RO 2       /* running in recovery */
#define WAIT 0
#define PRIMARY 1
#define STANDBY 2

/* -- durable -------------------------------------------------------------- */
byte a_ep = 1;              /* arbiter state file: epoch, primary, sync set */
byte a_prim = 0;
byte a_prev_prim;            /* ghost: for the stale-copy fault */
byte inset;                 /* the durable synchronous set U ("promotable"): counted for promotion */
byte leaving;               /* members of U on their way out: no longer named, still counted */
byte acks;                  /* the fewest copies in U an acknowledged commit may have */
byte acted[N];              /* each node's epoch file */
byte has[N];                /* each node's WAL: the commits it holds (bitmask) */
/* -- arbiter memory --------------------------------------------------------- */
bool a_up = 1;
byte silence;               /* ticks since the primary was heard (capped) */
byte nogrant;               /* set members heard with no grant, primary silent */
bool qdone;                 /* nogrant is a promotion quorum: the primary can no longer write */
byte fresh;                 /* of nogrant, those whose report was sent after qdone */
byte a_round;               /* the arbiter's round id (unique: kept across its restarts) */
/* -- nodes -------------------------------------------------------------------- */
bool up[N];                 /* node daemon */
byte pg[N];                 /* PostgreSQL: DOWN | RW | RO */
byte fol[N];                /* the primary a standby streams from */
byte names[N];              /* synchronous_standby_names (bitmask) */
byte al[N];                 /* arbiter lease left, holder's ticks */
byte gl[N*N];               /* gl[i*N+j]: lease i holds from j's grant */
byte slow[N];               /* ticks since the holder's clock last slipped */
byte gr[N];                 /* grantor: ticks its last grant (+TAIL) runs */
bool gpaused[N];
byte gallow[N];             /* the primary it may grant to (NONE: nobody) */
byte gallow_ep[N];
bool beat[N];               /* heartbeat sent this tick (one per interval) */
/* -- the network ---------------------------------------------------------------- */
byte hb[N];                 /* 0 none, 1 request in flight, 2 reply in flight */
byte hb_age[N];
byte r_ep[N]; byte r_pg[N]; bool r_grant[N]; byte r_has[N]; byte r_str[N];
byte r_names[N];
byte p_role[N]; byte p_ep[N]; byte p_prim[N]; byte p_names[N]; bool p_hold[N];
byte p_round[N]; byte r_round[N]; byte round[N];   /* the round a standby last heard, echoed */
/* -- ghosts ------------------------------------------------------------------- */
byte acked;                 /* commits acknowledged to a client */
byte ncommit;
byte maxacted[N];           /* highest epoch each node ever acted on */
byte faults;
bool quiet;                 /* LIVE: the primary's host died, then no fault */
byte quiet_ticks;
byte dead = NONE;

#ifdef STALE_ARBITER
#define INV1(n) skip
#else
#define INV1(n) assert((acked & ~has[n]) == 0)   /* no acknowledged commit missing */
#endif
#define bit(j) (1 << (j))
#define in(m, j) (((m) >> (j)) & 1)
#define pop(m) (in(m,0) + in(m,1) + in(m,2) + in(m,3))
#define kq(s) (pop(s) < K -> pop(s) : K)      /* effective k of a set */
#if defined(BUG_NO_PROMOTABLE)
#define COUNTS(n) 1                /* any standby's report counts, member of the set or not */
#else
#define COUNTS(n) in(inset, n)
#endif
/* The leases i holds that let it write: the arbiter's, or grants from k
   members of the synchronous set it uses (issue 17's rule; N=2: the
   standby's). */
byte g_cnt;
inline count_grants(i) {
    g_cnt = 0;
    for (j2 : 0 .. N-1) {
#ifdef BUG_NONMEMBER_GRANT
        if :: j2 != i && gl[i*N+j2] > 0 -> g_cnt++ :: else fi
#else
        if :: j2 != i && in(names[i], j2) && gl[i*N+j2] > 0 -> g_cnt++ :: else fi
#endif
    }
}
byte j2; byte j3; byte best;

inline clear_links(i) {
    hb[i] = 0
}

inline no_leases(i) {
    al[i] = 0;
    for (j3 : 0 .. N-1) { gl[i*N+j3] = 0 }
}

/* a standby stops granting (grants.stop) */
inline stop_granting(i) { gallow[i] = NONE; gpaused[i] = 1 }

/* The synchronous set U (inset), at a report of the primary n running
   read-write (pgha/quorum.py next_sync_set). The primary's names are always
   within U while U is not empty; acks is the fewest copies in U an
   acknowledged commit may have, so any |U|-acks+1 members of U hold it.
   - no member of U streams: U is emptied at once (nobody is promotable: safe
     whatever names the primary still uses; today's two-member rule);
   - a member of U not streaming and caught up is leaving: dropped from the
     names first, still counted, and out of U only once the primary reports
     names without it while the rest of U holds every commit (caught up in
     this report: the code's sync_since hand-shake);
   - a streaming, caught-up member joins U at once while U is not empty
     (durable before it is named: a larger U only needs a larger quorum);
   - into an empty U the members the primary names come all together, once
     every one of them is caught up (commits acknowledged by the primary
     alone are on them too).
   - acks falls at once to k of the names the primary uses or is told, and
     rises to it only once that many members of U are caught up.
   BUG_SHRINK_AT_ONCE: the first design (a member out of U as soon as it
   does not stream, before the primary's names lack it; acks = k of U).
   Here every member that counts is caught up at the report, which hides
   the hazard of raising acks early; test_quorum.py's walks, where a
   member of U may stream behind, catch it. */
inline sync_set(n) {
    elig = r_str[n] & ~NOSYNC & ~bit(n);
#ifdef BUG_SHRINK_AT_ONCE
    inset = (inset & elig) | (elig & r_names[n]); leaving = 0;
    if :: inset != 0 -> acks = kq(inset) :: else -> acks = 0 fi
#else
    if
    :: inset == 0 ->
        if :: r_names[n] != 0 && (r_names[n] & ~elig) == 0 -> inset = r_names[n]; acks = kq(r_names[n]) :: else fi
    :: inset != 0 && (inset & elig) == 0 -> inset = 0; leaving = 0; acks = 0
    :: else ->
        leaving = inset & ~elig;
        if :: leaving != 0 && (r_names[n] & leaving) == 0 -> inset = inset & ~leaving; leaving = 0 :: else fi;
        inset = inset | elig;
        /* fewer copies count at once; more once that many members of U hold
           every commit (caught up in this report) */
        tgt = (kq(inset & ~leaving) < kq(r_names[n]) -> kq(inset & ~leaving) : kq(r_names[n]));
        if
        :: tgt < acks -> acks = tgt
        :: tgt > acks && pop(inset & elig) >= tgt -> acks = tgt
        :: else
        fi
    fi
#endif
}
byte tgt;
byte elig;

/* The arbiter answers node n's heartbeat (decision.on_heartbeat). */
inline arbiter_answers(n) {
    if
    :: r_ep[n] > a_ep -> p_role[n] = WAIT   /* acted on an epoch we do not know: refuse */
    :: else ->
        if
        :: n == a_prim ->
            silence = 0; nogrant = 0; qdone = 0; fresh = 0;
            if
            :: r_pg[n] == RW -> sync_set(n)
            :: else -> skip
            fi;
            p_role[n] = PRIMARY; p_ep[n] = a_ep;
            /* the names the primary must use: the set but its leaving
               members; with no set, the streaming members, to catch up
               (N=2: the standby whenever it streams) */
            if
            :: inset != 0 -> p_names[n] = inset & ~leaving
            :: else -> p_names[n] = r_str[n] & ~NOSYNC & ~bit(n)
            fi
        :: else ->
            if
            :: r_pg[n] == RO && !r_grant[n] && silence >= L + MARGIN && COUNTS(n) -> nogrant = nogrant | bit(n)
            :: else -> nogrant = nogrant & ~bit(n); fresh = fresh & ~bit(n)
            fi;
            /* failover_blocker: the primary silent for lease + margin and
               |U|-acks+1 members of U heard with no grant (they pause their
               grants): from then on the primary cannot write. The most
               advanced of them is promoted, judged on reports sent after
               that moment (a new round), its own excepted: an earlier
               report may predate a commit it acknowledged. */
            if
            :: inset != 0 && acks != 0 && pop(nogrant & inset) + acks >= pop(inset) + 1 ->
                if :: !qdone -> qdone = 1; fresh = 0; a_round = (a_round + 1) % 4 :: else fi
            :: else -> qdone = 0; fresh = 0
            fi;
#if N > 2 && !defined(BUG_STALE_POSITIONS)
            if :: qdone && in(nogrant, n) && r_round[n] == a_round -> fresh = fresh | bit(n) :: else fi;
#else
            fresh = nogrant;     /* N=2: the quorum is the candidate alone */
#endif
            best = n;
            for (j3 : 0 .. N-1) {
                if
                :: in(nogrant, j3) && j3 != n && (!in(fresh, j3) || pop(r_has[j3]) > pop(r_has[n])) -> best = j3
                :: else
                fi
            }
            if
#ifdef BUG_NO_PROMOTABLE
            :: in(nogrant, n) && best == n ->
#elif defined(BUG_NO_FAILOVER)
            :: in(nogrant, n) && best == n && silence > L + MARGIN ->     /* never: silence is capped */
#elif defined(EARLY_PROMOTION)
            /* issue 18 item 4: promote once the standby stopped granting,
               without waiting out the old primary's arbiter lease */
#ifdef EARLY_AFTER_TIMEOUT
            /* ... but only once the primary's last instruction is older
               than the node's request timeout (it can no longer be taken) */
            :: r_pg[n] == RO && !r_grant[n] && in(inset, n) && best == n && silence > TMO ->
#else
            :: r_pg[n] == RO && !r_grant[n] && in(inset, n) && best == n ->
#endif
#else
            :: in(nogrant, n) && best == n && qdone ->
#endif
                INV1(n);     /* invariant 1, at the decision */
                a_prev_prim = a_prim; a_ep++; a_prim = n; inset = 0; leaving = 0; acks = 0; silence = 0; nogrant = 0; qdone = 0; fresh = 0;
                p_role[n] = PRIMARY; p_ep[n] = a_ep; p_names[n] = 0
            :: else ->
                p_role[n] = STANDBY; p_ep[n] = a_ep; p_prim[n] = a_prim; p_round[n] = a_round;
#if N > 2
                /* N members: a member heard with no grant stays silent
                   (grants paused) while the quorum is being gathered */
                p_hold[n] = in(nogrant, n)
#else
                p_hold[n] = 0
#endif
            fi
        fi
    fi
}

/* Node i takes the reply to its heartbeat (node_rules.decide + node._take). */
inline node_takes(i) {
    if
    :: p_role[i] == WAIT || p_ep[i] < acted[i] -> skip      /* WAIT, IGNORE_OLD_EPOCH */
    :: else ->
        assert(p_ep[i] >= maxacted[i]);     /* epochs never go back */
        acted[i] = p_ep[i]; maxacted[i] = p_ep[i];
        if
        :: p_role[i] == PRIMARY ->
            if :: L > hb_age[i] -> al[i] = L - hb_age[i] :: else fi;
            stop_granting(i);
            names[i] = p_names[i];
            if
            :: pg[i] != RW ->       /* P5/P7/P8/P9: start or promote */
                INV1(i);
                pg[i] = RW; fol[i] = NONE
            :: else
            fi
        :: else ->
            if
            :: pg[i] == RW -> pg[i] = DOWN; no_leases(i)        /* S1 DEMOTE */
            :: else
            fi;
            if
            :: pg[i] == DOWN || fol[i] != p_prim[i] ->           /* S3/S12/S13: rewind, follow */
                has[i] = has[i] & has[p_prim[i]]; pg[i] = RO; fol[i] = p_prim[i]
            :: else
            fi;
            if
            :: !p_hold[i] -> gallow[i] = p_prim[i]; gallow_ep[i] = p_ep[i]; gpaused[i] = 0  /* grants.follow */
            :: else
            fi;
            round[i] = p_round[i]
        fi
    fi
}

/* One tick of time on every clock. */
byte i1;
inline tick() {
    for (i1 : 0 .. N-1) {
        beat[i1] = 0;
        if :: slow[i1] < L + 1 -> slow[i1]++ :: else fi;
        if :: hb[i1] != 0 -> hb_age[i1]++; if :: hb_age[i1] > TMO -> hb[i1] = 0 :: else fi :: else fi;
        if :: gr[i1] > 0 -> gr[i1]-- :: else fi
    }
    if :: silence < L + MARGIN -> silence++ :: else fi;
    if :: quiet -> quiet_ticks++ :: else fi;
#ifdef REACH
    assert(REACH);
#endif
#ifdef LIVE
    /* liveness as bounded response: with the primary's host dead, a quorum
       up and a quiet network, a member is promoted within LIVE ticks */
    assert(!quiet || quiet_ticks <= LIVE || a_prim != dead && pg[a_prim] == RW)
#endif
}

/* The holder's clock: each lease it holds runs down, unless its clock slips
   this tick (at most once in L+1 ticks). Then the fencer. */
bool expired[N];
bool slip[N];                /* this holder's clock slips in the next tick */
inline leases_run(i) {
    if
    :: slip[i] -> slip[i] = 0; slow[i] = 0      /* this clock is slow this tick */
    :: else ->
        if :: al[i] > 0 -> al[i]-- :: else fi;
        for (j3 : 0 .. N-1) { if :: gl[i*N+j3] > 0 -> gl[i*N+j3]-- :: else fi }
    fi;
    count_grants(i);
    if
    :: pg[i] == RW && al[i] == 0 && g_cnt < kq(names[i]) ->
#ifdef BUG_FENCE_LATE
        if :: expired[i] -> pg[i] = DOWN :: else -> expired[i] = 1 fi     /* one tick late */
#else
        pg[i] = DOWN            /* the fencer, at the deadline */
#endif
    :: else -> expired[i] = 0
    fi
}



/* -- the steps of one node (i a constant) ----------------------------------- */
inline hb_send(i) {
    atomic {
        up[i] && hb[i] == 0 && !beat[i] ->
        d_step {
            beat[i] = 1; hb_age[i] = 0;
            r_ep[i] = acted[i]; r_pg[i] = pg[i]; r_has[i] = has[i]; r_names[i] = names[i]; r_round[i] = round[i];
            r_grant[i] = (gr[i] > 0);
            if :: !r_grant[i] -> gpaused[i] = 1 :: else fi;   /* pause before saying "no grant" */
            r_str[i] = 0;
            for (j3 : 0 .. N-1) {
                if :: j3 != i && pg[j3] == RO && fol[j3] == i && up[j3] && (has[i] & ~has[j3]) == 0 -> r_str[i] = r_str[i] | bit(j3) :: else fi
            };
            skip
        }
        if
        :: hb[i] = 1                                                    /* in flight */
        :: a_up -> d_step { arbiter_answers(i); node_takes(i) }         /* answered at once */
        :: !quiet -> skip                                               /* lost */
        fi
    }
}
inline hb_answer(i) {
    atomic {
        a_up && hb[i] == 1 -> d_step { arbiter_answers(i) };
        if
        :: hb[i] = 2                                                    /* reply in flight */
        :: up[i] -> d_step { node_takes(i); hb[i] = 0 }
        :: !quiet -> hb[i] = 0                                          /* lost */
        :: !quiet -> skip                                               /* duplicated: answered again */
        fi
    }
}
inline hb_take(i) { d_step { up[i] && hb[i] == 2 -> node_takes(i); hb[i] = 0 } }
inline hb_lose(i) { atomic { hb[i] != 0 && !quiet -> hb[i] = 0 } }
/* The lease link, one round trip. A delay only shortens the holder's lease
   (it counts from the send), so the undelayed grant is the worst case. */
inline lease_round(i, j) {
    d_step {
        up[i] && pg[i] == RW && up[j] && !gpaused[j] && gallow[j] == i && gallow_ep[j] == acted[i] &&
        (gr[j] < L + TAIL || gl[i*N+j] < L) ->
        gr[j] = L + TAIL; gl[i*N+j] = L
    }
}
/* Streaming catches up (a standby following i). */
inline stream(i, j) {
    d_step { pg[i] == RO && fol[i] == j && pg[j] != DOWN && has[i] != has[j] && (has[i] & ~has[j]) == 0 -> has[i] = has[j] }
}
inline crashes(i) {
    if
    :: atomic { faults < FAULTS && pg[i] != DOWN && !quiet -> faults++; pg[i] = DOWN; no_leases(i) }
    :: atomic { faults < FAULTS && up[i] && !quiet -> faults++; up[i] = 0; clear_links(i); stop_granting(i); round[i] = 9;
#ifdef TODAY_GRANTS_AT_RESTART
        gr[i] = 0               /* Grants() starts empty: "no grant" at once */
#endif
        /* otherwise the grant's end survives the restart: the fix proposed
           in docs/ha-model.md ("Found by the checks") promises at least that */
        }
    :: atomic { !up[i] && i != dead -> up[i] = 1;
#ifdef BUG_FORGET_EPOCH
        acted[i] = 0
#endif
        }
    :: atomic { slow[i] >= L + 1 && !slip[i] -> slip[i] = 1 }   /* bounded drift: one slip in L+1 ticks */
    fi
}
/* A commit on i, acknowledged by ANY k of its names; each named streaming
   member has flushed it or not yet. */
inline commit(i) {
    atomic {
        ncommit < MAXC && pg[i] == RW ->
        j2 = 0;
        for (j3 : 0 .. N-1) {
            if
            :: in(names[i], j3) && pg[j3] == RO && fol[j3] == i && (has[i] & ~has[j3]) == 0 ->
                if :: has[j3] = has[j3] | bit(ncommit); j2++ :: skip fi
            :: else
            fi
        }
        d_step {
            has[i] = has[i] | bit(ncommit);
            if :: names[i] == 0 || j2 >= kq(names[i]) -> acked = acked | bit(ncommit) :: else fi;
            ncommit++
        }
    }
}
#define NODE_STEPS(i) :: hb_send(i) :: hb_answer(i) :: hb_take(i) :: hb_lose(i) :: commit(i) :: crashes(i)

init {
    byte i;
    atomic {
        for (i : 0 .. N-1) {
            up[i] = 1; acted[i] = 1; maxacted[i] = 1; gallow[i] = NONE; gpaused[i] = 0;
            if
            :: i == 0 -> pg[i] = RW; fol[i] = NONE; al[i] = L
            :: else -> pg[i] = RO; fol[i] = 0; gallow[i] = 0; gallow_ep[i] = 1
            fi
        }
        inset = ((1 << N) - 2) & ~NOSYNC;     /* every standby synchronous and caught up */
        names[0] = inset; acks = kq(inset)
    }
    do
    NODE_STEPS(0)
    NODE_STEPS(1)
    :: lease_round(0, 1) :: lease_round(1, 0) :: stream(0, 1) :: stream(1, 0)
#if N > 2
    NODE_STEPS(2)
    :: lease_round(0, 2) :: lease_round(2, 0) :: lease_round(1, 2) :: lease_round(2, 1)
    :: stream(0, 2) :: stream(2, 0) :: stream(1, 2) :: stream(2, 1)
#endif
    :: atomic { faults < FAULTS && a_up && !quiet -> faults++; a_up = 0 }
    :: d_step { !a_up -> a_up = 1; silence = 0; nogrant = 0; qdone = 0; fresh = 0 }       /* Memory.at_start */
#ifdef STALE_ARBITER
    /* the arbiter restored from a copy one decision old (operator error):
       checked for the epoch property only, see docs/ha-model.md */
    :: d_step { faults < FAULTS && a_ep > 1 && !quiet -> faults++; a_ep--; a_prim = a_prev_prim; inset = 0; leaving = 0; acks = 0; silence = 0; nogrant = 0; qdone = 0; fresh = 0 }
#endif
    /* -- time ------------------------------------------------------------------------------ */
    :: d_step {
#ifdef LIVE
        /* quiet: every live node has beaten and every message is answered */
        !quiet || (a_up && (up[0] == 0 || beat[0] && hb[0] == 0) && (up[1] == 0 || beat[1] && hb[1] == 0)
                   && (N < 3 || up[2 % N] == 0 || beat[2 % N] && hb[2 % N] == 0)) ->
#else
        true ->
#endif
        tick();
        for (i : 0 .. N-1) { leases_run(i) }; skip }
#ifdef LIVE
    /* the primary's host dies; from then on nothing else fails */
    :: d_step { !quiet && pg[a_prim] == RW && up[a_prim] && a_up && inset != 0 ->
        dead = a_prim; quiet = 1; quiet_ticks = 0; pg[dead] = DOWN; clear_links(dead); no_leases(dead);
        for (i : 0 .. N-1) { up[i] = 1 }; up[dead] = 0 }
#endif
    od
}

/* Invariant 2 in every state: at most one member runs read-write (so at
   most one can acknowledge a commit). */
#define acker(i) (pg[i] == RW && (names[i] == 0 || \
    in(names[i], 0) && pg[0] == RO && fol[0] == i || \
    N > 1 && in(names[i], 1 % N) && pg[1 % N] == RO && fol[1 % N] == i || \
    N > 2 && in(names[i], 2 % N) && pg[2 % N] == RO && fol[2 % N] == i))
#ifdef EARLY_PROMOTION
/* Early promotion lets the old primary run read-write (stale reads) until
   its lease ends: the property is that no two can acknowledge a commit. */
ltl one_acker { [] (acker(0) + (N > 1 && acker(1 % N)) + (N > 2 && acker(2 % N)) <= 1) }
#else
ltl one_writer { [] ((pg[0] == RW) + (pg[1 % N] == RW && N > 1) + (pg[2 % N] == RW && N > 2) <= 1) }
#endif
