//! Any body, once verified, goes through `Event::parse`: it must answer, never panic, and
//! what it accepts must hold the invariants the rest of clerk-sync trusts (the column widths,
//! no control characters, no address under the reserved `.invalid` domain).
#![no_main]

use clerk_sync::domain::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(event) = Event::parse(body) {
        if let Some(id) = event.user_id() {
            assert!(id.as_str().starts_with("user_") && id.as_str().len() <= 128);
        }
        if let Event::Upsert { change, .. } = &event {
            assert!(change
                .name
                .as_ref()
                .is_none_or(|n| n.chars().count() <= 255 && !n.chars().any(char::is_control)));
            assert!(change.email.as_ref().is_none_or(|e| {
                let e = e.as_str();
                e.chars().count() <= 255
                    && e.contains('@')
                    && !e.chars().any(char::is_control)
                    && !e
                        .trim_end_matches('.')
                        .to_ascii_lowercase()
                        .ends_with(".invalid")
            }));
            assert_eq!(change.version, change.updated_at.timestamp_millis());
        }
        assert!(!event.event_type().is_empty());
    }
});
