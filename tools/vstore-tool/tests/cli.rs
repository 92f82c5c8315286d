//! The tool's subcommands, run as a user would.

use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
}

#[test]
fn demo_inspect_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = tool()
        .args([
            "demo",
            "--rows",
            "2000",
            "--embedding",
            "prerank@v7:16:i8",
            "--dir",
        ])
        .arg(&store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("opened snapshot 2"), "{text}");
    assert!(text.contains("1 new data file(s)"), "{text}");
    assert!(text.contains("version skew"), "{text}");
    assert!(
        text.contains("query: 2,000 candidates") && text.contains("not found 1"),
        "{text}"
    );

    let out = tool().arg("inspect").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("prerank@v7") && text.contains("2000 live items"),
        "{text}"
    );

    let out = tool().arg("verify").arg(&store).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: snapshot 2"));

    // Damage a data file: verify fails and names it.
    let victim = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-emb-prerank@v7.vcol"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[200] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let out = tool().arg("verify").arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("emb-prerank@v7.vcol") && err.contains("checksum"),
        "{err}"
    );

    let out = tool()
        .args(["inspect", "/nonexistent/store"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/store"));
}
