"""restore_command for pg_rewind --restore-target-wal: copy one WAL segment
of the old timeline from the new primary, which streamed it as a standby.

    python fetch_wal.py --host H --port P --user U --passfile F  SEGMENT  DEST

Run by pg_rewind (as PostgreSQL's OS user) for each segment the target's
pg_wal lacks. It reads the file with pg_read_binary_file, the same function
pg_rewind itself uses on the source, so it needs no other privilege. Only
a complete segment of exactly that name is served: a ".partial" or another
timeline's copy holds different WAL past the switch point. Exit 1 (and one
line on stderr) when the source does not have it; pg_rewind then says which
record it could not read. Standalone on purpose (psycopg2 only): it runs
outside the node daemon (pgha/files.py, its sibling, writes the segment).
"""
import argparse
import re
import sys

import psycopg2

try:
    from pgha import files
except ImportError:     # run as a script (pg_rewind's restore_command): pgha/ is sys.path[0]
    import files  # type: ignore[no-redef]

SEGMENT = re.compile(r"^[0-9A-F]{24}$")
# NULL when missing; a whole segment (PostgreSQL 15 has no (name, missing_ok) form).
SEGMENT_BYTES_SQL = ("SELECT pg_read_binary_file('pg_wal/' || %s, 0, "
                     "pg_size_bytes(current_setting('wal_segment_size')), true)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--passfile", required=True)
    parser.add_argument("segment")
    parser.add_argument("dest")
    args = parser.parse_args(argv)
    where = f"{args.host}:{args.port}"
    if not SEGMENT.match(args.segment):
        print(f"pgha fetch_wal: {args.segment!r} is not a WAL segment name; not fetched", file=sys.stderr)
        return 1
    try:
        conn = psycopg2.connect(host=args.host, port=args.port, user=args.user, passfile=args.passfile,
                                dbname="postgres", connect_timeout=5, application_name="pgha-fetch-wal")
        try:
            with conn.cursor() as cur:
                cur.execute(SEGMENT_BYTES_SQL, (args.segment,))
                data = cur.fetchone()[0]
        finally:
            conn.close()
    except psycopg2.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"pgha fetch_wal: cannot read {args.segment} from {where}: {first}", file=sys.stderr)
        return 1
    if data is None:
        print(f"pgha fetch_wal: {where} no longer has {args.segment}", file=sys.stderr)
        return 1
    files.write_durably(args.dest, bytes(data))
    print(f"pgha fetch_wal: fetched {args.segment} ({len(data)} bytes) from {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
