//! Binaries run as child processes: signals and their output.

use std::process::{Child, Command, Output};

/// Sends SIGTERM to `child` (it must still be there to receive it).
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// The standard output of a command that must have succeeded; panics with both outputs if not.
pub fn stdout_of(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_of_a_successful_command_is_its_stdout() {
        let output = Command::new("echo").arg("hello").output().unwrap();
        assert_eq!(stdout_of(&output), "hello\n");
    }

    #[test]
    #[should_panic]
    fn a_failed_command_fails_the_test() {
        let output = Command::new("false").output().unwrap();
        stdout_of(&output);
    }

    #[test]
    fn sigterm_ends_a_process_that_does_not_handle_it() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        sigterm(&child);
        assert!(!child.wait().unwrap().success());
    }
}
