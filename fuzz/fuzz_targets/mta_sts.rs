//! The MTA-STS parsers over arbitrary bytes: the bytes as a policy body, and as TXT records
//! (one per line). Beyond never panicking: every accepted policy has mode `none` or at least
//! one `mx`, a `max_age` within the RFC's bound and patterns in canonical form that match a
//! host built from them; an accepted TXT record has a 1-32 character alphanumeric id and was
//! the only `v=STSv1` record; errors have a message; and `matches` never panics on the input's
//! own lines used as host names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::policy::mta_sts::{parse_policy, parse_txt, Mode, StsError, MAX_MAX_AGE};

/// The rule `parse_txt` applies to pick STS records: `v=STSv1`, then the end or a delimiter.
fn is_sts(line: &str) -> bool {
    line.strip_prefix("v=STSv1").is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();

    match parse_policy(data) {
        Ok(policy) => {
            assert!(policy.mode == Mode::None || !policy.mx.is_empty(), "{policy:?}");
            assert!(policy.max_age <= MAX_MAX_AGE);
            for pattern in &policy.mx {
                assert_eq!(pattern, &pattern.to_ascii_lowercase(), "patterns are lower case");
                assert!(!pattern.ends_with('.') && !pattern.is_empty());
                // A pattern covers the host it describes (with a label for the wildcard).
                let host = match pattern.strip_prefix("*.") {
                    Some(suffix) => format!("mx.{suffix}"),
                    None => pattern.clone(),
                };
                assert!(policy.matches(&host), "{pattern} does not match {host}");
                assert!(policy.matches(&format!("{}.", host.to_ascii_uppercase())));
            }
            for line in &lines {
                let _ = policy.matches(line);
            }
            // What is persisted comes back the same.
            let json = serde_json::to_string(&policy).expect("a policy serializes");
            assert_eq!(serde_json::from_str::<mxpipe::policy::mta_sts::StsPolicy>(&json).expect("and deserializes"), policy);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    match parse_txt(&lines) {
        Ok(Some(txt)) => {
            assert!((1..=32).contains(&txt.id.len()) && txt.id.bytes().all(|b| b.is_ascii_alphanumeric()), "{txt:?}");
            assert_eq!(lines.iter().filter(|l| is_sts(l)).count(), 1);
        }
        Ok(None) => assert!(!lines.iter().any(|l| is_sts(l))),
        Err(StsError::MultipleTxt(n)) => assert!(n >= 2),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
