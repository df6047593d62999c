use sqlx::Connection as _;

use super::*;
use crate::keys::SecretKeys;

fn keks(spec: &str) -> KeyEncryptionKeys {
    KeyEncryptionKeys::from_ring(&SecretKeys::parse("PERSONAL_DATA_KEYS", spec).unwrap())
}

const K1: &str = "k1:first-kek-first-kek-first-kek-first-kek";
const K2: &str = "k2:second-kek-second-kek-second-kek-second";

async fn key_of(keys: &SubjectKeys, subject: Uuid) -> Option<DataKey> {
    keys.for_reading(&[subject]).await.unwrap().remove(&subject)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_subject_gets_one_key_that_every_reader_finds(pool: PgPool) {
    let keys = SubjectKeys::new(pool.clone(), keks(K1));
    let ada = Uuid::now_v7();
    assert!(
        key_of(&keys, ada).await.is_none(),
        "no key before the first write"
    );
    let mut conn = pool.acquire().await.unwrap();
    let written = keys.for_writing_in(&mut conn, ada).await.unwrap();
    let again = keys.for_writing_in(&mut conn, ada).await.unwrap();
    let sealed = written.seal(b"place", b"ada@example.com");
    assert_eq!(again.open(b"place", &sealed).unwrap(), b"ada@example.com");
    let read = key_of(&keys, ada).await.expect("a key");
    assert_eq!(read.open(b"place", &sealed).unwrap(), b"ada@example.com");
    let stored: Vec<u8> = sqlx::query_scalar("select wrapped from subject_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.len() > 32, "stored wrapped, never as the bare key");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_made_in_a_transaction_that_rolls_back_is_gone(pool: PgPool) {
    let keys = SubjectKeys::new(pool.clone(), keks(K1));
    let ada = Uuid::now_v7();
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    keys.for_writing_in(&mut tx, ada).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(key_of(&keys, ada).await.is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn writers_racing_for_a_new_subject_share_one_key(pool: PgPool) {
    let keys = SubjectKeys::new(pool.clone(), keks(K1));
    let ada = Uuid::now_v7();
    let writers = (0..8).map(|_| {
        let (keys, pool) = (keys.clone(), pool.clone());
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            keys.for_writing_in(&mut conn, ada)
                .await
                .unwrap()
                .seal(b"p", b"v")
        })
    });
    let mut sealed = Vec::new();
    for writer in writers {
        sealed.push(writer.await.unwrap());
    }
    let key = key_of(&keys, ada).await.unwrap();
    for s in sealed {
        assert_eq!(key.open(b"p", &s).unwrap(), b"v");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn erasure_destroys_the_key_once_and_for_good(pool: PgPool) {
    let keys = SubjectKeys::new(pool.clone(), keks(K1));
    let (ada, bob, never) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut conn = pool.acquire().await.unwrap();
    keys.for_writing_in(&mut conn, ada).await.unwrap();
    keys.for_writing_in(&mut conn, bob).await.unwrap();

    assert!(keys.erase_in(&mut conn, ada).await.unwrap());
    assert!(
        !keys.erase_in(&mut conn, ada).await.unwrap(),
        "erasing twice"
    );
    assert!(keys.is_erased(ada).await.unwrap());
    assert!(key_of(&keys, ada).await.is_none());
    assert!(
        key_of(&keys, bob).await.is_some(),
        "another person keeps theirs"
    );
    assert!(matches!(
        keys.for_writing_in(&mut conn, ada).await,
        Err(SubjectKeysError::Erased(id)) if id == ada
    ));
    let left: Option<Vec<u8>> =
        sqlx::query_scalar("select wrapped from subject_keys where subject_id = $1")
            .bind(ada)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, None);

    assert!(
        keys.erase_in(&mut conn, never).await.unwrap(),
        "a subject without a key"
    );
    assert!(matches!(
        keys.for_writing_in(&mut conn, never).await,
        Err(SubjectKeysError::Erased(_))
    ));
}

#[sqlx::test(migrations = "../migrations")]
async fn rotation_rewraps_every_key_and_the_old_entry_is_then_not_needed(pool: PgPool) {
    let old = SubjectKeys::new(pool.clone(), keks(K1));
    let mut conn = pool.acquire().await.unwrap();
    let mut sealed = Vec::new();
    for _ in 0..5 {
        let subject = Uuid::now_v7();
        let key = old.for_writing_in(&mut conn, subject).await.unwrap();
        sealed.push((subject, key.seal(b"p", subject.as_bytes())));
    }
    let erased = Uuid::now_v7();
    old.for_writing_in(&mut conn, erased).await.unwrap();
    old.erase_in(&mut conn, erased).await.unwrap();

    let rotating = SubjectKeys::new(pool.clone(), keks(&format!("{K1},{K2}")));
    let mut reports = Vec::new();
    let rewrapped = rotating
        .rewrap_all(2, |done, total| reports.push((done, total)))
        .await
        .unwrap();
    assert_eq!(rewrapped, 5);
    assert_eq!(reports, [(2, 5), (4, 5), (5, 5)]);
    assert_eq!(
        rotating.rewrap_all(2, |_, _| {}).await.unwrap(),
        0,
        "nothing left"
    );

    let new_only = SubjectKeys::new(pool.clone(), keks(K2));
    new_only.check().await.unwrap();
    for (subject, s) in sealed {
        let key = key_of(&new_only, subject).await.unwrap();
        assert_eq!(key.open(b"p", &s).unwrap(), subject.as_bytes());
    }
    assert!(key_of(&new_only, erased).await.is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_ring_without_the_wrapping_key_or_with_a_wrong_one_fails_the_check(pool: PgPool) {
    let keys = SubjectKeys::new(pool.clone(), keks(K1));
    keys.check().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    keys.for_writing_in(&mut conn, Uuid::now_v7())
        .await
        .unwrap();
    keys.check().await.unwrap();

    let missing = SubjectKeys::new(pool.clone(), keks(K2))
        .check()
        .await
        .unwrap_err();
    assert!(matches!(
        &missing,
        SubjectKeysError::Unwrap { source: CipherError::UnknownKek(id), .. } if id == "k1"
    ));
    assert!(
        missing.to_string().contains("PERSONAL_DATA_KEYS"),
        "{missing}"
    );
    let wrong = SubjectKeys::new(pool, keks("k1:not-the-first-kek-not-the-first-kek!"))
        .check()
        .await
        .unwrap_err();
    assert!(matches!(
        wrong,
        SubjectKeysError::Unwrap {
            source: CipherError::Refused,
            ..
        }
    ));
}
