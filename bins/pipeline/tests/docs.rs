//! What the docs say is what the program does.
//!
//! - `--help` of every command is checked against a snapshot in
//!   `tests/snapshots/` (`SNAPSHOTS=overwrite` rewrites them), and every
//!   flag and `PIPELINE_*` variable it lists must appear in the docs.
//! - Every command line of README.md and docs/ that runs a pipeline binary
//!   must be accepted by it (its flags exist).
//! - The README's curl examples run, as written, against a server this
//!   test starts, and what they print is checked.
//! - Relative links and their anchors in README.md and docs/ resolve.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pipeline_core::testkit::process::Process;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every Markdown file under docs/.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every documented text: README.md and docs/.
fn all_docs() -> String {
    markdown_files().iter().map(|p| read(p)).collect()
}

/// The programs and their subcommands whose `--help` is a snapshot.
fn help_commands() -> Vec<(String, Vec<String>)> {
    let pipeline = env!("CARGO_BIN_EXE_pipeline").to_string();
    let mut commands = vec![(pipeline.clone(), vec![])];
    for sub in [
        "serve",
        "api",
        "transformer",
        "save2db",
        "activity",
        "upload",
        "load",
        "bench",
        "bench-archive",
        "gc-blobs",
        "expire",
        "replay-dead",
    ] {
        commands.push((pipeline.clone(), vec![sub.to_string()]));
    }
    for bin in [
        env!("CARGO_BIN_EXE_pipeline-api"),
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        env!("CARGO_BIN_EXE_pipeline-save2db"),
        env!("CARGO_BIN_EXE_pipeline-activity"),
    ] {
        commands.push((bin.to_string(), vec![]));
    }
    commands
}

/// `program args --help`, with no `PIPELINE_*` variable set.
fn help(program: &str, args: &[String]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).arg("--help");
    for (k, _) in std::env::vars() {
        if k.starts_with("PIPELINE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{program} {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot_name(program: &str, args: &[String]) -> String {
    let bin = Path::new(program).file_name().unwrap().to_string_lossy();
    let mut name = bin.to_string();
    for a in args {
        name.push('.');
        name.push_str(a);
    }
    format!("{name}.txt")
}

#[test]
fn help_matches_its_snapshot() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let overwrite = std::env::var("SNAPSHOTS").is_ok_and(|v| v == "overwrite");
    let mut stale = Vec::new();
    for (program, args) in help_commands() {
        let text = help(&program, &args);
        let path = dir.join(snapshot_name(&program, &args));
        if overwrite {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != text {
            stale.push(format!(
                "{}:\n--- snapshot\n{expected}\n--- now\n{text}",
                path.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "--help changed; update the docs, then run `SNAPSHOTS=overwrite cargo test -p pipeline-cli --test docs`:\n{}",
        stale.join("\n")
    );
}

#[test]
fn every_flag_and_variable_is_documented() {
    let docs = all_docs();
    let mut missing = BTreeSet::new();
    for (program, args) in help_commands() {
        let text = help(&program, &args);
        for word in text.split(|c: char| c.is_whitespace() || "[]<>,=".contains(c)) {
            let word = word.trim_end_matches(['.', ':', ')']);
            let flag = word.starts_with("--") && word.len() > 3 && word != "--help";
            let var = word.starts_with("PIPELINE_");
            if (flag || var) && word != "--version" && !docs.contains(word) {
                missing.insert(format!("{word} ({})", snapshot_name(&program, &args)));
            }
        }
    }
    assert!(missing.is_empty(), "not in README.md or docs/: {missing:?}");
}

/// Split a shell command line into words (quotes removed; no expansion).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if !any => break,
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// The command lines of every shell block (```sh) of `text`
/// (continuations joined, comments dropped).
fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            in_block = !in_block && (fence == "sh" || fence == "bash");
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if !full.is_empty() && !full.starts_with('#') {
            lines.push(full);
        }
    }
    lines
}

/// For a line running one of our programs: the binary and its arguments.
fn our_command(line: &str) -> Option<(String, Vec<String>)> {
    let mut words: Vec<String> = shell_words(line);
    // Leading `VAR=value` assignments, a trailing `&`.
    while words.first().is_some_and(|w| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
    }) {
        words.remove(0);
    }
    if words.last().is_some_and(|w| w == "&") {
        words.pop();
    }
    let first = words.first()?.clone();
    if first == "cargo" && words.get(1).is_some_and(|w| w == "run") {
        let bin = words
            .windows(2)
            .find(|w| w[0] == "--bin")
            .map(|w| w[1].clone())?;
        let sep = words.iter().position(|w| w == "--")?;
        return Some((bin, words[sep + 1..].to_vec()));
    }
    let name = Path::new(&first).file_name()?.to_string_lossy().to_string();
    let bin = match name.as_str() {
        "pipeline" | "my-pipeline" => "pipeline".to_string(),
        "pipeline-api" | "pipeline-transformer" | "pipeline-save2db" | "pipeline-activity" => name,
        _ => return None,
    };
    Some((bin, words[1..].to_vec()))
}

fn binary(name: &str) -> &'static str {
    match name {
        "pipeline" => env!("CARGO_BIN_EXE_pipeline"),
        "pipeline-api" => env!("CARGO_BIN_EXE_pipeline-api"),
        "pipeline-transformer" => env!("CARGO_BIN_EXE_pipeline-transformer"),
        "pipeline-save2db" => env!("CARGO_BIN_EXE_pipeline-save2db"),
        "pipeline-activity" => env!("CARGO_BIN_EXE_pipeline-activity"),
        other => panic!("unknown program {other}"),
    }
}

#[test]
fn documented_command_lines_are_accepted() {
    let mut checked = 0;
    let mut refused = Vec::new();
    for file in markdown_files() {
        for line in command_lines(&read(&file)) {
            let Some((bin, args)) = our_command(&line) else {
                continue;
            };
            // Flags are parsed (and an unknown one refused) before `--help`
            // stops the program.
            let out = Command::new(binary(&bin))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            checked += 1;
            if !out.status.success() {
                refused.push(format!(
                    "{}: {line}\n{}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(checked >= 10, "only {checked} command lines found");
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

/// GitHub's anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_block = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn relative_links_and_anchors_resolve() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = file.parent().unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if !anchor.is_empty() && !anchors(&read(&resolved)).contains(anchor) {
                broken.push(format!("{}: {target} (no such heading)", file.display()));
            }
        }
    }
    assert!(checked >= 10, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The fenced block of `section` in `text`.
fn block_of(text: &str, section: &str) -> String {
    let body = text
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {section}"));
    let body = body.split("\n## ").next().unwrap_or_default();
    let block = body.split("```").nth(1).unwrap_or_default();
    // Without the language tag.
    block.split_once('\n').map_or("", |(_, b)| b).to_string()
}

fn run_shell(line: &str, dir: &Path, id: &str) -> (i32, String) {
    let out = Command::new("timeout")
        .args(["40", "bash", "-c", line])
        .current_dir(dir)
        .env("ID", id)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Poll `url` until it answers 200 (within 30 s).
fn wait_archived(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        if out.stdout == b"200" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{url} never archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_readme_curl_examples_run() {
    let readme = read(&root().join("README.md"));
    let block = block_of(&readme, "The API with curl");
    let lines = command_lines(&format!("```sh\n{block}```"));
    assert!(lines.len() >= 10, "{lines:?}");

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root().join("samples"), dir.path().join("samples")).unwrap();
    let db = format!("sqlite://{}/docs.db?mode=rwc", dir.path().display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .env("RUST_LOG", "warn");
    let (_server, line) = Process::start(cmd, "pipeline serve", Duration::from_secs(60));
    let base = line
        .strip_prefix("pipeline listening on ")
        .unwrap()
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();

    let mut id = String::new();
    for line in lines {
        let line = line.replace("http://127.0.0.1:4555", &base);
        let streaming = line.starts_with("curl -N");
        let run = if streaming {
            // Server-sent events never end: watch them for two seconds.
            line.replacen("curl -N", "curl -N --max-time 2", 1)
        } else {
            line.clone()
        };
        if line.contains("/original") {
            // The original is served once archived: wait for that first
            // (the README's comment says so), bounded.
            wait_archived(&format!("{base}/v1/images/{id}/original"));
        }
        let (code, out) = run_shell(&run, dir.path(), &id);
        if streaming {
            assert!(code == 28 || code == 0, "{line}: exit {code}");
            assert!(!out.contains("\"error\""), "{line}: {out}");
            continue;
        }
        assert_eq!(code, 0, "{line}: exit {code}, {out}");
        if line.contains("-X DELETE") {
            assert_eq!(out.trim(), "204", "{line}: {out}");
            continue;
        }
        if let Some(file) = shell_words(&line)
            .windows(2)
            .find(|w| w[0] == "-o")
            .map(|w| w[1].clone())
        {
            let bytes = std::fs::read(dir.path().join(&file)).unwrap();
            assert!(
                image::guess_format(&bytes).is_ok(),
                "{line}: {file} is not an image ({} bytes: {:?})",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            );
            if line.contains("-w") {
                assert!(out.trim() == "200" || out.trim() == "204", "{line}: {out}");
            }
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{line}: {e}: {out}"));
        assert!(json.get("error").is_none(), "{line}: {json}");
        if line.contains("-X POST") || line.contains(" -F ") {
            let new_id = json["images"][0]["id"]
                .as_str()
                .or_else(|| json["id"].as_str())
                .unwrap_or_else(|| panic!("{line}: no id in {json}"));
            if id.is_empty() {
                id = new_id.to_string();
            }
        }
        if line.contains("/v1/images/$ID") {
            assert_eq!(json["id"].as_str(), Some(id.as_str()), "{line}: {json}");
        }
        if line.contains("/v1/images?limit") {
            assert!(json["items"].is_array(), "{line}: {json}");
        }
    }
    assert!(!id.is_empty(), "no upload in the README's examples");
}

#[test]
fn every_route_of_the_api_is_in_docs_api_md() {
    let api = read(&root().join("docs/api.md"));
    let doc: serde_json::Value = serde_json::from_str(&pipeline::http::document()).unwrap();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let route = format!("`{} {path}", method.to_uppercase());
            if !api.contains(&route) {
                missing.push(route);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from docs/api.md: {missing:?}"
    );
}
