use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

/// How long a connection may sit idle in a pool before the pool's periodic check closes
/// it (down to the pool's minimum). With mysql_async's default of zero, a pool keeps only
/// its minimum (one) idle connection and closes every other one the moment it is
/// returned, so under concurrent load nearly every call opened a fresh connection (TCP,
/// handshake, the init commands): a quarter of the history service's CPU in a profile
/// (`docs/perf/history.svg`, against `history-after.svg`).
const IDLE_TTL: Duration = Duration::from_secs(60);

/// Whether a connection going back to the pool keeps its prepared statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statements {
    /// Not reset on return (mysql_async resets by default): the reset is a round trip,
    /// and it drops the connection's prepared statements, so the next call on it would
    /// prepare its statement again, another round trip. For a fixed set of statements.
    Keep,
    /// Reset on return: for SQL whose text varies with its input (`IN` lists, multi-row
    /// inserts), where kept statements are seldom reused and only take memory (the
    /// keyword service grew 14 MiB a minute in the soak keeping them).
    Reset,
}

/// A pool of 1 to `max` connections to the MySQL of `dsn` (see [`mysql_opts`]) that keeps
/// the connections a load needs for [`IDLE_TTL`] after it.
///
/// Nothing here leaves session state on a connection (a dropped transaction is rolled
/// back by mysql_async either way) except named locks: a connection that takes one opts
/// into the reset with `reset_connection(true)`, so a lock its holder could not release is
/// not handed to the next caller.
pub fn mysql_pool(dsn: &str, max: usize, statements: Statements) -> anyhow::Result<Pool> {
    let constraints =
        PoolConstraints::new(1, max).ok_or_else(|| anyhow::anyhow!("invalid MySQL pool size"))?;
    let opts = OptsBuilder::from_opts(mysql_opts(dsn)?).pool_opts(
        PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(IDLE_TTL)
            .with_reset_connection(statements == Statements::Reset),
    );
    Ok(Pool::new(opts))
}

/// Connection options from a `mysql://` URL or the original's Go DSN
/// (`user:pass@tcp(host:port)/db?params`, params ignored), with every session in
/// utf8mb4 and UTC so timestamps and text round-trip exactly.
pub fn mysql_opts(dsn: &str) -> anyhow::Result<Opts> {
    let base =
        if dsn.starts_with("mysql://") {
            OptsBuilder::from_opts(Opts::from_url(dsn).map_err(|error| {
                anyhow::anyhow!("MYSQL_DSN is not a valid mysql:// URL: {error}")
            })?)
        } else {
            go_dsn(dsn)?
        };
    Ok(base
        .init(vec![
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            "SET time_zone = '+00:00'",
        ])
        .into())
}

fn go_dsn(dsn: &str) -> anyhow::Result<OptsBuilder> {
    let bad = || {
        anyhow::anyhow!(
            "MYSQL_DSN must be mysql://user:pass@host:port/db or user:pass@tcp(host:port)/db"
        )
    };
    let (credentials, rest) = dsn.rsplit_once('@').ok_or_else(bad)?;
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let rest = rest.strip_prefix("tcp(").ok_or_else(bad)?;
    let (address, rest) = rest.split_once(')').ok_or_else(bad)?;
    let database = rest
        .strip_prefix('/')
        .unwrap_or(rest)
        .split('?')
        .next()
        .unwrap_or_default();
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (address, 3306),
    };
    Ok(OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass((!password.is_empty()).then_some(password))
        .db_name((!database.is_empty()).then_some(database)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_original_go_dsn() -> anyhow::Result<()> {
        let opts = mysql_opts(
            "root:s3cret@tcp(db.local:3307)/chatdb?parseTime=true&charset=utf8mb4,utf8",
        )?;
        assert_eq!(opts.ip_or_hostname(), "db.local");
        assert_eq!(opts.tcp_port(), 3307);
        assert_eq!(opts.user(), Some("root"));
        assert_eq!(opts.pass(), Some("s3cret"));
        assert_eq!(opts.db_name(), Some("chatdb"));
        Ok(())
    }

    #[test]
    fn reads_urls_and_rejects_nonsense() -> anyhow::Result<()> {
        let opts = mysql_opts("mysql://chat:chat@127.0.0.1:3306/chatdb")?;
        assert_eq!(opts.db_name(), Some("chatdb"));
        assert!(mysql_opts("not a dsn").is_err());
        assert!(mysql_opts("u:p@tcp(h:notaport)/db").is_err());
        Ok(())
    }
}
