//! Writes `haproxy/examples/*.cfg` from the renderer: `cargo run -p patrol-haproxy --example
//! regenerate`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (name, text) in [
        ("demo.cfg", patrol_haproxy::examples::demo()),
        ("standalone.cfg", patrol_haproxy::examples::standalone()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
