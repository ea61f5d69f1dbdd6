//! Rebuilds when a migration changes: `sqlx::migrate!` embeds the files, and Cargo does not
//! track them on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations-vectors");
}
