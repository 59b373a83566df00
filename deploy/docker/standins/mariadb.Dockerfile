# Stand-in for mariadb:10.11 (or mysql:8): Debian's MariaDB 10.11 with an entrypoint that
# honours the official images' variables (MYSQL_ROOT_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD,
# MYSQL_ALLOW_EMPTY_PASSWORD, MYSQL_DATABASE, MYSQL_USER, MYSQL_PASSWORD, and their MARIADB_
# spellings) and runs /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh on first start.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      mariadb-server mariadb-client \
 && rm -rf /var/lib/apt/lists/* /var/lib/mysql/* \
 && mkdir -p /docker-entrypoint-initdb.d /run/mysqld \
 && chown mysql:mysql /var/lib/mysql /run/mysqld
COPY mariadb.cnf /etc/mysql/mariadb.conf.d/99-container.cnf
COPY mariadb-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/mysql
EXPOSE 3306
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["mariadbd"]
