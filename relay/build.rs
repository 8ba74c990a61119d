//! Builds the browser terminal (`web/`, xterm.js + esbuild) and embeds it.
//! A fresh clone needs only Node and npm: dependencies are installed from
//! the lock file on first build.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let web =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("../web");
    for p in ["src", "package.json", "package-lock.json", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    if !web.join("node_modules/@xterm/xterm").exists() {
        run(&web, &["ci", "--no-audit", "--no-fund"]);
    }
    run(&web, &["run", "build"]);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    let dist = web.join("dist");
    let mut code = String::from("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for (name, ctype) in [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("dashboard.html", "text/html; charset=utf-8"),
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
    ] {
        let path = dist.join(name);
        assert!(
            path.exists(),
            "web build did not produce {}",
            path.display()
        );
        code.push_str(&format!(
            "    ({name:?}, {ctype:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code).expect("write assets.rs");
}

fn run(dir: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run npm (Node.js 20 and npm are needed to build web/): {e}")
        });
    assert!(
        status.success(),
        "npm {} failed in {}",
        args.join(" "),
        dir.display()
    );
}
