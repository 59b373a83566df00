//! `chat-bench [--seconds N] [--rounds N] [--out DIR]`: runs the benchmark against the
//! release binaries next to this one, prints the table, writes JSON and SVG to DIR.

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

#[allow(clippy::print_stdout)]
async fn run() -> anyhow::Result<()> {
    let here = std::env::current_exe()?;
    let bin_dir = here.parent().map(PathBuf::from).unwrap_or_default();
    let mut options = chat_bench::Options::full(
        bin_dir,
        std::env::var("BENCH_REDIS_ADDR").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        std::env::var("BENCH_MYSQL_DSN")
            .unwrap_or_else(|_| "mysql://chat:chat@127.0.0.1:3306/chat_bench".into()),
    );
    let mut out = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--seconds" => options.seconds_per_case = value()?.parse()?,
            "--rounds" => options.rounds = value()?.parse()?,
            "--out" => out = PathBuf::from(value()?),
            other => anyhow::bail!("unknown argument {other}; see the module docs"),
        }
    }
    let results = chat_bench::run(&options).await?;
    println!("{}", results.table());
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(out.join("throughput.svg"), results.svg())?;
    println!(
        "written: {}/results.json, {}/throughput.svg",
        out.display(),
        out.display()
    );
    anyhow::ensure!(
        results.errors() == 0,
        "{} requests failed",
        results.errors()
    );
    Ok(())
}
