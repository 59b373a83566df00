//! The shipped Prometheus configuration and alerting rules are valid, as Prometheus'
//! own `promtool` reads them (Debian's `prometheus` package ships it).

use std::path::PathBuf;
use std::process::Command;

fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .map_err(|error| {
            anyhow::anyhow!("cannot run promtool ({error}); install it: apt-get install prometheus")
        })?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "promtool {args:?} failed:\n{printed}"
    );
    Ok(printed)
}

fn deploy(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn promtool_accepts_the_prometheus_config() -> anyhow::Result<()> {
    let printed = promtool(&["check", "config", &deploy("prometheus/prometheus.yml")])?;
    assert!(printed.contains("SUCCESS"), "{printed}");
    Ok(())
}

#[test]
fn promtool_accepts_the_alerting_rules() -> anyhow::Result<()> {
    let rules = std::fs::read_dir(deploy("prometheus/rules"))?
        .map(|entry| Ok(entry?.path().display().to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    assert!(!rules.is_empty());
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    let printed = promtool(&args)?;
    assert!(printed.contains("SUCCESS: 16 rules found"), "{printed}");
    Ok(())
}
