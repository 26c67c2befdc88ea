//! The SMTP server's command parser over arbitrary lines: it must never panic; an address it
//! hands out holds no control byte (so it cannot smuggle a second command into a relayed
//! envelope), and outside a quoted local part no bracket or space; and the verb is
//! case-insensitive (the line with its verb upper-cased parses to the same command).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::smtp_server::command::{parse, Command};

fn clean(path: &[u8]) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for &b in path {
        if b < 0x20 || b == 0x7f {
            return false;
        }
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if b == b'"' {
            quoted = true;
        } else if matches!(b, b'<' | b'>' | b' ') {
            return false;
        }
    }
    true
}

fuzz_target!(|line: &[u8]| {
    let cmd = parse(line);
    match cmd {
        Command::Mail { path, .. } => assert!(clean(path)),
        Command::Rcpt { path } => assert!(!path.is_empty() && clean(path)),
        _ => {}
    }
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut upper = line.to_vec();
    upper[..verb_end].make_ascii_uppercase();
    assert_eq!(std::mem::discriminant(&parse(&upper)), std::mem::discriminant(&cmd));
    let _ = cmd.carries_no_mail();
});
