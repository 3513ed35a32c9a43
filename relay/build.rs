//! Embeds the web pages (`relay/web/`) and the browser client
//! (`clients/js/src/`) into the binary, as a table of URL path → file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut assets = Vec::new();
    collect(&manifest.join("web"), "", &mut assets);
    // The browser client: every module and declaration file in clients/js/src.
    let client = manifest.join("../clients/js/src");
    println!("cargo::rerun-if-changed={}", client.display());
    for entry in fs::read_dir(&client).expect("reading clients/js/src") {
        let path = entry.expect("reading clients/js/src").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && (name.ends_with(".js") || name.ends_with(".d.ts")) {
            println!("cargo::rerun-if-changed={}", path.display());
            assets.push((format!("/client/{name}"), path));
        }
    }
    println!("cargo::rerun-if-changed={}", manifest.join("web").display());
    assets.sort();
    let mut out = String::from("/// Embedded web assets: (URL path, relative source path, bytes).\n");
    out.push_str("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for (url, path) in &assets {
        let abs = path.canonicalize().expect("asset path");
        let rel =
            abs.strip_prefix(manifest.parent().unwrap().canonicalize().unwrap()).expect("asset inside the workspace");
        writeln!(
            out,
            "    ({url:?}, {:?}, include_bytes!({:?})),",
            rel.display().to_string(),
            abs.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    fs::write(PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_assets.rs"), out)
        .expect("writing web_assets.rs");
}

/// Every file under `dir`, served at `/<prefix>/<name>` (`index.html` also at the directory's URL).
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    println!("cargo::rerun-if-changed={}", dir.display());
    for entry in entries {
        let path = entry.expect("reading relay/web").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, &format!("{prefix}/{name}"), out);
        } else {
            println!("cargo::rerun-if-changed={}", path.display());
            if name == "index.html" {
                out.push((format!("{prefix}/"), path.clone()));
            }
            out.push((format!("{prefix}/{name}"), path));
        }
    }
}
