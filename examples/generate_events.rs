//! Writes a JSON-lines file of realistic Clerk `user.*` webhook bodies, for benchmarks.
//!
//! `cargo run --release --example generate_events -- EVENTS USERS OUT.jsonl [ADDRESS_EVERY]`
//!
//! Each body is shaped like Clerk's (2–3 KB: addresses, external accounts, metadata); every
//! user is created once, then updated with increasing `updated_at`, and about 1 in 50 users is
//! deleted at the end of its history. A user's primary address changes every ADDRESS_EVERY
//! versions (default 1: every version claims another address, the hardest case for the
//! address rules and for the indexes). Deterministic: the same arguments give the same file.

use std::io::{BufWriter, Write};

use serde_json::json;

/// A small deterministic generator (xorshift64*), so the file is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const T0: i64 = 1_714_564_800_000;

fn body(
    event_type: &str,
    user: u64,
    version: u64,
    address_every: u64,
    rng: &mut Rng,
) -> serde_json::Value {
    let id = format!("user_bench{user:08}");
    let email = format!(
        "person{user}.v{}@example.com",
        (version / address_every) % 3
    );
    let updated = T0 + (version as i64) * 1_000 + (user as i64 % 997);
    let accounts: Vec<_> = (0..2)
        .map(|i| {
            json!({"object": "google_account", "id": format!("idn_ext{user}{i}"), "provider": "oauth_google",
                   "identification_id": format!("idn_ext{user}{i}"), "provider_user_id": format!("{}", rng.next()),
                   "approved_scopes": "email https://www.googleapis.com/auth/userinfo.email openid profile",
                   "email_address": email, "first_name": "Bench", "last_name": format!("User{user}"),
                   "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocJbench-avatar-url-of-realistic-length=s1000-c",
                   "image_url": "https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2ltYWdlcy5jbGVyay5kZXYifQ",
                   "username": null, "public_metadata": {}, "label": null,
                   "verification": {"status": "verified", "strategy": "oauth_google", "attempts": null, "expire_at": 1_714_565_400_000i64}})
        })
        .collect();
    json!({
        "type": event_type,
        "object": "event",
        "timestamp": updated,
        "instance_id": "ins_2bench",
        "event_attributes": {"http_request": {"client_ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"}},
        "data": {
            "object": "user",
            "id": id,
            "external_id": null,
            "created_at": T0,
            "updated_at": updated,
            "first_name": "Bench",
            "last_name": format!("User {user} v{version}"),
            "username": null,
            "image_url": "https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2ltYWdlcy5jbGVyay5kZXYifQ",
            "has_image": false,
            "primary_email_address_id": format!("idn_mail{user}"),
            "primary_phone_number_id": null,
            "primary_web3_wallet_id": null,
            "password_enabled": false,
            "two_factor_enabled": false,
            "totp_enabled": false,
            "backup_code_enabled": false,
            "email_addresses": [{"object": "email_address", "id": format!("idn_mail{user}"), "email_address": email,
                                 "reserved": false, "linked_to": [{"type": "oauth_google", "id": format!("idn_ext{user}0")}],
                                 "verification": {"status": "verified", "strategy": "from_oauth_google", "attempts": null, "expire_at": null}}],
            "phone_numbers": [],
            "web3_wallets": [],
            "passkeys": [],
            "external_accounts": accounts,
            "saml_accounts": [],
            "public_metadata": if version % 5 == 4 { json!({"role": "admin"}) } else { json!({"plan": "free"}) },
            "private_metadata": {"crm_id": format!("crm-{}", rng.next())},
            "unsafe_metadata": {"onboarding": {"step": version, "completed": version > 2}},
            "last_sign_in_at": updated,
            "banned": false,
            "locked": false,
            "lockout_expires_in_seconds": null,
            "verification_attempts_remaining": 100,
            "delete_self_enabled": true,
            "create_organization_enabled": true,
            "last_active_at": updated,
            "legal_accepted_at": null
        }
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(events), Some(users), Some(out)) = (
        args.first().and_then(|a| a.parse::<u64>().ok()),
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: generate_events EVENTS USERS OUT.jsonl [ADDRESS_EVERY]");
        std::process::exit(2);
    };
    let address_every = match args.get(3).map(|a| a.parse::<u64>()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("ADDRESS_EVERY must be a positive whole number");
            std::process::exit(2);
        }
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut file = BufWriter::new(std::fs::File::create(out)?);
    let mut versions = vec![0u64; usize::try_from(users.max(1)).unwrap_or(1)];
    for n in 0..events {
        let user = if n < users { n } else { rng.below(users) };
        let slot = &mut versions[usize::try_from(user).unwrap_or(0)];
        let event = if *slot == 0 {
            body("user.created", user, 0, address_every, &mut rng)
        } else if n + users / 50 >= events && user % 50 == 0 {
            json!({"type": "user.deleted", "object": "event", "timestamp": T0, "instance_id": "ins_2bench",
                   "data": {"object": "user", "id": format!("user_bench{user:08}"), "deleted": true}})
        } else {
            body("user.updated", user, *slot, address_every, &mut rng)
        };
        *slot += 1;
        serde_json::to_writer(&mut file, &event)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}
