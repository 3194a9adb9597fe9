//! The personal-data key store against a real nats-server: sealing binds a
//! value to its key and field; erasure makes every copy unreadable for every
//! process, leaves no key bytes on disk, and is final; replicas racing to make
//! one subject's key agree on one; an outage is an error, never a panic.

use std::time::Duration;

use gridwork_personal::{ERASED, KeyState, KeyStore, Opened, PersonalError, STREAM, SUBJECT_PREFIX, key_name};
use gridwork_testkit::nats::NatsServer;

async fn store(nats: &NatsServer) -> KeyStore {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    KeyStore::connect(async_nats::jetstream::new(client), 1).await.expect("key store")
}

/// The key bytes as the store holds them (the test reads the stream itself).
async fn raw_key(nats: &NatsServer, name: &str) -> Vec<u8> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let stream = async_nats::jetstream::new(client).get_stream(STREAM).await.expect("stream");
    let message = stream.get_last_raw_message_by_subject(&format!("{SUBJECT_PREFIX}{name}")).await.expect("entry");
    assert_eq!(message.payload.len(), 33, "a live key: a tag and 32 bytes");
    message.payload[1..].to_vec()
}

/// Whether `needle` occurs in any file under `dir`.
fn on_disk(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_sealed_value_opens_only_under_its_key_as_its_field() {
    let nats = NatsServer::start().await.expect("nats");
    let keys = store(&nats).await;
    let a = key_name("intake", "incident", "a").expect("name");
    let b = key_name("intake", "incident", "b").expect("name");
    let sealed = keys.seal(&a, "description", "water through the ceiling, flat 301".as_bytes()).await.expect("seal");
    let sealed = sealed.expect("a live key");
    assert!(!sealed.ciphertext.windows(5).any(|w| w == b"water"), "the plaintext is not in the sealed value");
    assert_eq!(
        keys.open(&sealed, "description").await.expect("open"),
        Opened::Plain("water through the ceiling, flat 301".into())
    );
    // Another field, another subject, an altered byte: refused, never misread.
    assert!(matches!(keys.open(&sealed, "address_text").await, Err(PersonalError::Corrupt { .. })));
    keys.seal(&b, "description", b"x").await.expect("seal b");
    let moved = gridwork_personal::Sealed { key: b.clone(), ..sealed.clone() };
    assert!(matches!(keys.open(&moved, "description").await, Err(PersonalError::Corrupt { .. })));
    let mut altered = sealed.clone();
    altered.ciphertext[0] ^= 1;
    assert!(matches!(keys.open(&altered, "description").await, Err(PersonalError::Corrupt { .. })));
    // A key the store never held is missing, not erased.
    let unknown = gridwork_personal::Sealed { key: key_name("intake", "incident", "z").expect("name"), ..sealed };
    assert!(matches!(keys.open(&unknown, "description").await, Err(PersonalError::Missing(_))));
    // Names are checked.
    for bad in ["intake.incident", "intake.incident.a.b", "intake..a", "intake.incident.a b", "intake.incident.*"] {
        assert!(matches!(keys.seal(bad, "f", b"x").await, Err(PersonalError::InvalidName(_))), "{bad}");
    }
    assert!(key_name("intake", "incident", &"x".repeat(129)).is_err());
}

#[tokio::test]
async fn erasure_makes_every_copy_unreadable_for_every_process_and_is_final() {
    let nats = NatsServer::start().await.expect("nats");
    let writer = store(&nats).await;
    // Its cache would keep the key for 30 s: the tombstone going by is what
    // makes it forget.
    let reader = store(&nats).await;
    let name = key_name("intake", "incident", "erase-me").expect("name");
    let sealed = writer.seal(&name, "description", b"Mrs Li, 3-2-401, lives alone").await.expect("seal").expect("key");
    assert_eq!(
        reader.open(&sealed, "description").await.expect("open"),
        Opened::Plain(b"Mrs Li, 3-2-401, lives alone".to_vec())
    );
    assert_eq!(writer.state(&name).await.expect("state"), KeyState::Live);

    assert!(writer.erase(&name, 1_700_000_000_000).await.expect("erase"), "a live key destroyed");
    assert_eq!(writer.open(&sealed, "description").await.expect("open"), Opened::Erased, "at once where it was erased");
    assert_eq!(store(&nats).await.open(&sealed, "description").await.expect("open"), Opened::Erased, "a fresh process");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while reader.open(&sealed, "description").await.expect("open") != Opened::Erased {
        assert!(tokio::time::Instant::now() < deadline, "another process forgets the key as its tombstone goes by");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(Opened::Erased.text(), ERASED);
    assert_eq!(writer.state(&name).await.expect("state"), KeyState::Erased { at_unix_ms: 1_700_000_000_000 });

    // Final: nothing is sealed under it again, and erasing again is a no-op.
    assert_eq!(writer.seal(&name, "description", b"again").await.expect("seal"), None);
    assert!(!writer.erase(&name, 1_800_000_000_000).await.expect("erase again"));
    assert_eq!(writer.state(&name).await.expect("state"), KeyState::Erased { at_unix_ms: 1_700_000_000_000 });
    // A subject erased before anything was sealed never gets a key.
    let never = key_name("intake", "incident", "never").expect("name");
    assert!(!writer.erase(&never, 1).await.expect("erase"));
    assert_eq!(writer.seal(&never, "description", b"x").await.expect("seal"), None);
}

#[tokio::test]
async fn an_erased_key_leaves_no_bytes_on_disk_even_after_a_crash_between_tombstone_and_scrub() {
    let nats = NatsServer::start().await.expect("nats");
    let keys = store(&nats).await;
    let name = key_name("intake", "incident", "disk").expect("name");
    keys.seal(&name, "description", b"x").await.expect("seal").expect("key");
    let key = raw_key(&nats, &name).await;
    assert!(!on_disk(&nats.store_dir(), &key).is_empty(), "the key is on disk while live (the check can see it)");
    keys.erase(&name, 1).await.expect("erase");
    assert_eq!(on_disk(&nats.store_dir(), &key), Vec::<std::path::PathBuf>::new(), "no file holds the erased key");

    // A process that wrote the tombstone and stopped before the scrub: the
    // next erasure finishes it.
    let second = key_name("intake", "incident", "crash").expect("name");
    keys.seal(&second, "description", b"y").await.expect("seal").expect("key");
    let key = raw_key(&nats, &second).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let live = js.get_stream(STREAM).await.expect("stream");
    let sequence =
        live.get_last_raw_message_by_subject(&format!("{SUBJECT_PREFIX}{second}")).await.expect("entry").sequence;
    let mut tombstone = vec![0u8];
    tombstone.extend_from_slice(&5i64.to_be_bytes());
    tombstone.extend_from_slice(&sequence.to_be_bytes());
    js.publish(format!("{SUBJECT_PREFIX}{second}"), tombstone.into()).await.expect("publish").await.expect("ack");
    assert!(!on_disk(&nats.store_dir(), &key).is_empty(), "tombstone written, key not yet scrubbed");
    assert!(!keys.erase(&second, 9).await.expect("erase again"), "already tombstoned");
    assert_eq!(on_disk(&nats.store_dir(), &key), Vec::<std::path::PathBuf>::new(), "scrubbed on the second erasure");
    assert_eq!(keys.state(&second).await.expect("state"), KeyState::Erased { at_unix_ms: 5 });
}

#[tokio::test]
async fn replicas_racing_to_make_one_subjects_key_agree_on_one() {
    let nats = NatsServer::start().await.expect("nats");
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(store(&nats).await);
    }
    let name = key_name("intake", "incident", "race").expect("name");
    let mut tasks = Vec::new();
    for i in 0..16usize {
        let keys = replicas[i % 4].clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            keys.seal(&name, "description", format!("account {i}").as_bytes()).await.expect("seal").expect("key")
        }));
    }
    let fresh = store(&nats).await;
    for (i, task) in tasks.into_iter().enumerate() {
        let sealed = task.await.expect("task");
        assert_eq!(
            fresh.open(&sealed, "description").await.expect("every value opens under the one key"),
            Opened::Plain(format!("account {i}").into_bytes())
        );
    }
}

#[tokio::test]
async fn an_outage_is_an_error_and_keys_outlive_a_restart() {
    let mut nats = NatsServer::start().await.expect("nats");
    let keys = store(&nats).await.with_cache_ttl(Duration::from_millis(1));
    let name = key_name("dispatch", "case", "outage").expect("name");
    let sealed = keys.seal(&name, "comment", b"slow").await.expect("seal").expect("key");
    nats.kill();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let other = key_name("dispatch", "case", "other").expect("name");
    assert!(matches!(keys.seal(&other, "comment", b"x").await, Err(PersonalError::Unavailable(_))));
    assert!(matches!(keys.open(&sealed, "comment").await, Err(PersonalError::Unavailable(_))));
    nats.restart().await.expect("restart");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match keys.open(&sealed, "comment").await {
            Ok(opened) => {
                assert_eq!(opened, Opened::Plain(b"slow".to_vec()), "the key outlived the restart");
                break;
            }
            Err(PersonalError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_store_that_could_lose_bring_back_or_copy_keys_is_refused() {
    let nats = NatsServer::start().await.expect("nats");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let base = gridwork_personal::stream_config(1);
    let cases: Vec<(&str, async_nats::jetstream::stream::Config)> = vec![
        ("max_age", async_nats::jetstream::stream::Config { max_age: Duration::from_secs(3600), ..base.clone() }),
        ("deletes denied", async_nats::jetstream::stream::Config { deny_delete: true, ..base.clone() }),
        ("purges allowed", async_nats::jetstream::stream::Config { deny_purge: false, ..base.clone() }),
        ("max_msgs_per_subject", async_nats::jetstream::stream::Config { max_messages_per_subject: 1, ..base.clone() }),
        (
            "republish",
            async_nats::jetstream::stream::Config {
                republish: Some(async_nats::jetstream::stream::Republish {
                    source: format!("{SUBJECT_PREFIX}>"),
                    destination: "copied.>".into(),
                    headers_only: false,
                }),
                ..base.clone()
            },
        ),
        (
            "memory storage",
            async_nats::jetstream::stream::Config {
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..base.clone()
            },
        ),
    ];
    for (what, config) in cases {
        js.create_stream(config).await.unwrap_or_else(|e| panic!("a stream with {what}: {e}"));
        let refused = KeyStore::connect(js.clone(), 1).await.err().unwrap_or_else(|| panic!("{what} refused"));
        assert!(matches!(refused, PersonalError::Unsafe(_)), "{what}: {refused}");
        assert!(refused.to_string().contains(what), "{what}: {refused}");
        js.delete_stream(STREAM).await.expect("delete");
    }
    KeyStore::connect(js, 1).await.expect("made as it should be, it is taken");
}

/// A tombstone that names another subject's message (written by a bug or by
/// hand) does not make an erasure delete it: the scrub deletes only the live
/// key of its own subject, so no erased subject can lose its tombstone and
/// be keyed again.
#[tokio::test]
async fn a_tombstone_naming_another_message_scrubs_nothing_but_its_own_key() {
    let nats = NatsServer::start().await.expect("nats");
    let keys = store(&nats).await;
    let victim = key_name("intake", "incident", "victim").expect("name");
    keys.erase(&victim, 1).await.expect("erase");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(STREAM).await.expect("stream");
    let victim_tombstone =
        stream.get_last_raw_message_by_subject(&format!("{SUBJECT_PREFIX}{victim}")).await.expect("tombstone").sequence;
    let hostile = key_name("intake", "incident", "hostile").expect("name");
    let mut tombstone = vec![0u8];
    tombstone.extend_from_slice(&2i64.to_be_bytes());
    tombstone.extend_from_slice(&victim_tombstone.to_be_bytes());
    js.publish(format!("{SUBJECT_PREFIX}{hostile}"), tombstone.into()).await.expect("publish").await.expect("ack");
    keys.erase(&hostile, 3).await.expect("erase");
    stream.get_raw_message(victim_tombstone).await.expect("the victim's tombstone is still there");
    assert_eq!(keys.state(&victim).await.expect("state"), KeyState::Erased { at_unix_ms: 1 });
    assert_eq!(store(&nats).await.seal(&victim, "description", b"x").await.expect("seal"), None, "and stays erased");
}
