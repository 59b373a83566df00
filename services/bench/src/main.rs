//! `chat-bench [--seconds N] [--rounds N] [--only CASE]... [--out DIR]`: runs the benchmark
//! against the release binaries next to this one (only the cases named by an `--only`,
//! or so named and qualified, when given), prints the table, writes JSON and SVG to DIR, and every
//! process's `/metrics` at the end as `metrics-NAME.txt`.
//!
//! `chat-bench soak [--seconds N] [--clients N] [--out DIR]`: the soak (`make soak`)
//! against the binaries next to this one, debug or release; prints the table, writes
//! `soak.md` and `soak.json` to DIR (`target/soak`) and fails if a check failed.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report_exit(run().await)
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn report_exit(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The directory of this binary, where the services' binaries of the same build are.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    Ok(here.parent().map(PathBuf::from).unwrap_or_default())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("soak") {
        args.next();
        return soak(args).await;
    }
    bench(args).await
}

/// The Redis and MySQL a run uses: `{run}_REDIS_ADDR` and `{run}_MYSQL_DSN`, by
/// default the dev servers with the database `database`.
fn servers(run: &str, database: &str) -> (String, String) {
    (
        std::env::var(format!("{run}_REDIS_ADDR"))
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        std::env::var(format!("{run}_MYSQL_DSN"))
            .unwrap_or_else(|_| format!("mysql://chat:chat@127.0.0.1:3306/{database}")),
    )
}

/// Writes a run's `files` (name, content) into `out`, and says where, in that order.
#[allow(clippy::print_stdout)]
fn write_out(out: &std::path::Path, files: &[(impl AsRef<str>, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for (name, content) in files {
        let name = name.as_ref();
        std::fs::write(out.join(name), content)?;
        written.push(format!("{}/{name}", out.display()));
    }
    println!("written: {}", written.join(", "));
    Ok(())
}

/// The next argument, the value of `flag`.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<String> {
    args.next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
}

#[allow(clippy::print_stdout)]
async fn soak(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let (redis_addr, mysql_dsn) = servers("SOAK", "chat_soak");
    let mut options = chat_bench::soak::SoakOptions::full(bin_dir()?, redis_addr, mysql_dsn);
    let mut out = PathBuf::from("target/soak");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => options.seconds = value(&mut args, &arg)?.parse()?,
            "--clients" => options.clients = value(&mut args, &arg)?.parse()?,
            "--out" => out = PathBuf::from(value(&mut args, &arg)?),
            other => anyhow::bail!("unknown argument {other}; see the module docs"),
        }
    }
    println!(
        "soak: {} clients for {} s against the binaries in {}",
        options.clients,
        options.seconds,
        options.bin_dir.display()
    );
    let report = chat_bench::soak::run(&options).await?;
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    write_out(&out, &[("soak.md", report.markdown()), ("soak.json", json)])?;
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| check.name.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "soak failed: {}", failed.join(", "));
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn bench(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let (redis_addr, mysql_dsn) = servers("BENCH", "chat_bench");
    let mut options = chat_bench::Options::full(bin_dir()?, redis_addr, mysql_dsn);
    let mut out = PathBuf::from("target/bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => options.seconds_per_case = value(&mut args, &arg)?.parse()?,
            "--rounds" => options.rounds = value(&mut args, &arg)?.parse()?,
            "--only" => options.only.push(value(&mut args, &arg)?),
            "--out" => out = PathBuf::from(value(&mut args, &arg)?),
            other => anyhow::bail!("unknown argument {other}; see the module docs"),
        }
    }
    let results = chat_bench::run(&options).await?;
    println!("{}", results.table());
    let json = serde_json::to_string_pretty(&results)?;
    let mut files = vec![
        ("results.json".to_owned(), json),
        ("throughput.svg".to_owned(), results.svg()),
    ];
    for (process, text) in &results.metrics {
        files.push((format!("metrics-{process}.txt"), text.clone()));
    }
    write_out(&out, &files)?;
    anyhow::ensure!(
        results.errors() == 0,
        "{} requests failed",
        results.errors()
    );
    Ok(())
}
