# PostgreSQL HA manager: one image for the two database nodes and the arbiter
# (and, with docker-compose.etcd.yml, the etcd members and the second arbiter:
# etcd-server and python3-etcd3gw are for those).
# The base image may be the official debian:bookworm-slim or, on machines
# without a container registry, one imported from a debootstrap rootfs
# (see harness/docker.py). Its apt sources are used as they are.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian's postgresql-common would create a "main" cluster on install; the
# node manages its own data directory, so skip that.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgha.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        postgresql-15 python3 python3-psycopg2 iproute2 iptables procps \
        etcd-server python3-etcd3gw \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/pgha /var/lib/pgha-arbiter \
 && chown postgres:postgres /var/lib/pgha

WORKDIR /app
# The app: node.py arbiter.py logger.py *_settings.py tests.py pgha/ docker/
# (.dockerignore keeps tests, benchmarks and VCS data out of the context).
COPY . /app/
# The node's settings hold passwords: readable by its user only, or node.py refuses them.
# Test project only: one fresh key set per image build, baked in; each
# container deletes at start the keyrings it must not hold (entrypoint.sh).
# A real deployment runs pgha-keys once and copies each file to its host.
# The daemons also refuse a settings file group or others can write (a
# checkout made under umask 002): the app is root's and not group-writable.
RUN chmod -R go-w /app && chmod 0755 /app/docker/entrypoint.sh \
 && chown postgres:postgres /app/docker/node.py && chmod 0600 /app/docker/node.py \
 && python3 -m pgha.keys generate --dir /etc/pgha/keys --nodes pgsql-1,pgsql-2 >/dev/null

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["node"]
