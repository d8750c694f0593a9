//! The signature-header handling: any `svix-id`, `svix-timestamp`, `svix-signature` and body
//! must be answered (never a panic), and a correct signature among any number of other
//! entries must be accepted.
//!
//! Input layout: the first byte picks the mode (even: the header as given; odd: a correct
//! signature is appended to it), then the id, the timestamp, the signature header and the
//! body, separated by newlines.
#![no_main]

use clerk_sync::verify::{message_id, Verifier};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == b'\n');
    let id = parts.next().unwrap_or_default();
    let timestamp = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let verifier = Verifier::parse(SECRET).expect("the fixed secret is valid");

    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("svix-id", id),
        ("svix-timestamp", timestamp),
        ("svix-signature", signature),
    ] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    let _ = message_id(&headers);
    let _ = verifier.verify(body, &headers, true);
    let _ = verifier.verify(body, &headers, false);

    if mode % 2 == 1 {
        let (Ok(id), Ok(timestamp), Ok(text), Ok(signature)) = (
            std::str::from_utf8(id),
            std::str::from_utf8(timestamp),
            std::str::from_utf8(body),
            std::str::from_utf8(signature),
        ) else {
            return;
        };
        let Ok(seconds) = timestamp.parse::<i64>() else {
            return;
        };
        let usable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !usable(id) || !signature.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return;
        }
        let correct = verifier
            .sign(id, seconds, text.as_bytes())
            .expect("signing never fails");
        let mut headers = http::HeaderMap::new();
        headers.insert("svix-id", id.parse().expect("graphic ASCII"));
        headers.insert("svix-timestamp", timestamp.parse().expect("digits"));
        headers.insert(
            "svix-signature",
            format!("{signature} {correct}")
                .trim_start()
                .parse()
                .expect("graphic ASCII"),
        );
        assert_eq!(
            verifier.verify(text.as_bytes(), &headers, false),
            Ok(()),
            "a correct signature among others was refused"
        );
    }
});
