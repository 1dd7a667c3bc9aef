//! The deployment files of `deploy/` are valid: every systemd unit passes
//! `systemd-analyze verify` (with `ExecStart` pointing at the binaries this
//! build made) without a warning, and its sandbox rates "OK" or better in
//! `systemd-analyze security`; the nginx configuration passes `nginx -t`.
//! (`tests/e2e_chaos.rs` runs that nginx configuration in front of two API
//! hosts.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The units, with their binaries replaced by this build's.
fn units(dir: &Path) -> Vec<PathBuf> {
    let bins = Path::new(env!("CARGO_BIN_EXE_pipeline")).parent().unwrap();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(deploy().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/"), "{name}");
        let text = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        // A template is verified as one of its instances.
        let name = name.replace("@.service", "@1.service");
        let copy = dir.join(&name);
        std::fs::write(&copy, text).unwrap();
        out.push(copy);
    }
    out.sort();
    out
}

#[test]
fn systemd_units_verify_and_are_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let units = units(dir.path());
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "pipeline-activity.service",
            "pipeline-api.service",
            "pipeline-save2db.service",
            "pipeline-transformer@1.service"
        ]
    );
    for unit in &units {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit)
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze (systemd) is installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            unit.display()
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level for {}: {text}", unit.display()));
        let level: f64 = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        eprintln!("{}: exposure {level}", unit.display());
        assert!(level <= 2.0, "{}: {line}", unit.display());
    }
}

#[test]
fn nginx_configuration_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let site = deploy().join("nginx/pipeline.conf");
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {};\n}}\n",
        site.display()
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let out = Command::new("nginx")
        .args(["-t", "-c"])
        .arg(&conf)
        .output()
        .expect("nginx is installed (scripts/test-setup.sh)");
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
