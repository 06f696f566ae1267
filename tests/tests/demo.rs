//! The README's main command runs this demo: it must keep working at every commit.

use anyhow::{Context as _, Result};
use skiff_tests::{privileged, workspace_binary};

#[test]
fn the_demo_balances_over_every_backend_refuses_an_empty_service_and_cleans_up() -> Result<()> {
    if !privileged("demo") {
        return Ok(());
    }
    let out = std::process::Command::new(workspace_binary("skiff-datapath-demo")?)
        .output()
        .context("running the demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for backend in ["backend-0", "backend-1", "backend-2"] {
        let http = stdout
            .lines()
            .filter(|l| l.contains("request") && l.contains(backend))
            .count();
        assert!(http > 0, "no HTTP request answered by {backend}:\n{stdout}");
    }
    assert!(stdout.contains("Couldn't connect"), "{stdout}");
    assert!(
        stdout.contains("10.96.0.10:80/TCP"),
        "no listing:\n{stdout}"
    );
    // It removed its namespaces and pins.
    let pid_tag = stdout
        .split("skiff-demo-")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .context("no demo instance name in the output")?;
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("skiff-demo-{pid_tag}")));
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/skiff/skiff-demo-{pid_tag}")).exists());
    Ok(())
}
