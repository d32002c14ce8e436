//! Embeds the Tauri configuration and the built frontend.
fn main() {
    tauri_build::build()
}
