//! Every example under `config/examples/` parses; every file under
//! `config/examples/invalid/` fails with an error naming the key in its
//! `# expect:` line.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::path::Path;
use warren_config::{AgentConfig, ConfigError, from_toml_str};

fn parse(name: &str, text: &str) -> Result<String, ConfigError> {
    if name.starts_with("agent") {
        from_toml_str::<AgentConfig>(text).map(|c| format!("{c:?}"))
    } else if name.starts_with("control") {
        from_toml_str::<warren_config::ControlConfig>(text).map(|c| format!("{c:?}"))
    } else if name.starts_with("relay") {
        from_toml_str::<warren_config::RelayConfig>(text).map(|c| format!("{c:?}"))
    } else {
        panic!("example {name} has no known prefix (agent*, control*, relay*)")
    }
}

fn toml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn valid_examples_parse_and_hide_secrets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let files = toml_files(&dir);
    assert!(files.len() >= 3, "expected example files in {dir:?}");
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let dbg = parse(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !dbg.contains("secret-0123456789"),
            "{name}: Debug leaks a secret: {dbg}"
        );
        assert!(dbg.contains("***"), "{name}: secret not masked");
    }
}

#[test]
fn invalid_examples_fail_naming_the_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let files = toml_files(&dir);
    assert!(files.len() >= 5);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: KEY`"))
            .trim()
            .to_string();
        match parse(&name, &text) {
            Ok(_) => panic!("{name}: parsed but must fail"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&expect),
                    "{name}: error {msg:?} does not name {expect:?}"
                );
                assert!(
                    !msg.contains("0123456789abcdef"),
                    "{name}: error leaks a secret"
                );
            }
        }
    }
}

#[test]
fn env_overrides_file_and_nested_keys() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "agent.toml",
            r#"
node_id = "from-file"
credential = "file-secret-0123456789"
[[relays]]
addr = "127.0.0.1:7443"
server_name = "warren.localhost"
"#,
        )?;
        jail.set_env("WARREN_AGENT_NODE_ID", "from-env");
        jail.set_env("WARREN_AGENT_DOCKER__NETWORK", "envnet");
        jail.set_env("WARREN_AGENT_DOCKER__PIDS_LIMIT", "77");
        let c: AgentConfig = warren_config::load("agent", Some(Path::new("agent.toml")))
            .map_err(|e| e.to_string())?;
        assert_eq!(c.node_id, "from-env");
        assert_eq!(c.docker.network, "envnet");
        assert_eq!(c.docker.pids_limit, 77);
        assert_eq!(c.credential.expose(), "file-secret-0123456789");

        jail.set_env("WARREN_AGENT_DOCKER__PIDS_LIMIT", "3");
        let e =
            warren_config::load::<AgentConfig>("agent", Some(Path::new("agent.toml"))).unwrap_err();
        assert!(e.to_string().contains("docker.pids_limit"), "{e}");
        jail.set_env("WARREN_AGENT_DOCKER__PIDS_LIMIT", "77");

        jail.set_env("WARREN_AGENT_DOCKER__DISK_WRITE_MBPS", "64");
        let c: AgentConfig = warren_config::load("agent", Some(Path::new("agent.toml")))
            .map_err(|e| e.to_string())?;
        assert_eq!(c.docker.disk_write_mbps, 64);
        assert_eq!(c.docker.disk_read_mbps, 0);
        jail.set_env("WARREN_AGENT_DOCKER__DISK_WRITE_MBPS", "99999999999999");
        let e =
            warren_config::load::<AgentConfig>("agent", Some(Path::new("agent.toml"))).unwrap_err();
        assert!(e.to_string().contains("docker.disk_write_mbps"), "{e}");
        jail.set_env("WARREN_AGENT_DOCKER__DISK_WRITE_MBPS", "32");

        jail.set_env("WARREN_AGENT_BOGUS", "1");
        jail.set_env("WARREN_AGENT_DOCKER__PIDS_LIMIT", "77");
        let e =
            warren_config::load::<AgentConfig>("agent", Some(Path::new("agent.toml"))).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        Ok(())
    });
}

#[test]
fn missing_file_is_named() {
    let e = warren_config::load::<AgentConfig>("agent", Some(Path::new("/nonexistent/agent.toml")))
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/agent.toml"));
}
