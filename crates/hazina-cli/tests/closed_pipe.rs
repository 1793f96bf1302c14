//! `hazina` writing to a closed pipe (`hazina admin status | head -1`, the reader gone) ends
//! quietly with status 141, as a command ended by SIGPIPE reports in a shell, not with a panic.

use std::process::{Command, Stdio};

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    // No server at this address: `admin status` prints its header, then a line saying so.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["--addr", "http://127.0.0.1:1", "admin", "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hazina");
    // The reader leaves before the first line is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("hazina ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
