//! API keys and image bytes.

use super::fixtures::*;

pub async fn api_keys_round_trip_are_found_by_hash_and_listed_oldest_first(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    let mut k1 = api_key(10, &a, "h1");
    k1.created_at = at(10) + chrono::Duration::nanoseconds(5);
    let k2 = api_key(20, &a, "h2");
    let k3 = api_key(30, &a, "h3");
    let kb = api_key(15, &b, "hb");
    for k in [&k3, &kb, &k1, &k2] {
        s.insert_api_key(k).await.expect("insert");
    }
    assert_eq!(s.get_api_key(&k1.id).await.expect("get"), Some(k1.clone()));
    assert_eq!(s.get_api_key(&id_at(99)).await.expect("get"), None);
    assert_eq!(s.find_api_key("h2").await.expect("find"), Some(k2.clone()));
    assert_eq!(s.find_api_key("hb").await.expect("find"), Some(kb.clone()));
    assert_eq!(s.find_api_key("H2").await.expect("find"), None);
    assert_eq!(s.find_api_key("").await.expect("find"), None);
    assert_eq!(
        s.list_api_keys(&a).await.expect("list"),
        vec![k1.clone(), k2.clone(), k3.clone()]
    );
    assert_eq!(s.list_api_keys(&b).await.expect("list"), vec![kb]);
    assert!(s.list_api_keys(&id_at(3)).await.expect("list").is_empty());

    // A hash names one key, an id one key.
    assert!(is_conflict(s.insert_api_key(&api_key(40, &b, "h1")).await));
    let mut same_id = api_key(50, &b, "h-new");
    same_id.id = k2.id.clone();
    assert!(is_conflict(s.insert_api_key(&same_id).await));
    assert_eq!(s.list_api_keys(&a).await.expect("list").len(), 3);
    assert_eq!(s.list_api_keys(&b).await.expect("list").len(), 1);
    assert_eq!(s.find_api_key("h-new").await.expect("find"), None);
}

pub async fn revoking_a_key_is_idempotent_and_keeps_the_first_time(s: S) {
    let a = id_at(1);
    let k = api_key(10, &a, "h1");
    let other = api_key(20, &a, "h2");
    s.insert_api_key(&k).await.expect("insert");
    s.insert_api_key(&other).await.expect("insert");

    assert!(s.revoke_api_key(&k.id, at(100)).await.expect("revoke"));
    let mut revoked = k.clone();
    revoked.revoked_at = Some(at(100));
    assert_eq!(
        s.get_api_key(&k.id).await.expect("get"),
        Some(revoked.clone())
    );
    // Found by its hash still (the caller tells a revoked key from an unknown one).
    assert_eq!(
        s.find_api_key("h1").await.expect("find"),
        Some(revoked.clone())
    );

    assert!(s
        .revoke_api_key(&k.id, at(200))
        .await
        .expect("revoke again"));
    assert_eq!(
        s.get_api_key(&k.id).await.expect("get"),
        Some(revoked.clone())
    );
    assert!(!s
        .revoke_api_key(&id_at(99), at(100))
        .await
        .expect("revoke missing"));
    assert_eq!(
        s.list_api_keys(&a).await.expect("list"),
        vec![revoked, other]
    );
}

pub async fn touching_a_key_records_its_use_and_never_undoes_a_revocation(s: S) {
    let a = id_at(1);
    let k = api_key(10, &a, "h1");
    s.insert_api_key(&k).await.expect("insert");

    s.touch_api_key(&k.id, at(100)).await.expect("touch");
    let mut used = k.clone();
    used.last_used_at = Some(at(100));
    assert_eq!(s.get_api_key(&k.id).await.expect("get"), Some(used.clone()));

    assert!(s.revoke_api_key(&k.id, at(200)).await.expect("revoke"));
    // A use that raced the revocation lands after it.
    s.touch_api_key(&k.id, at(300)).await.expect("touch");
    let mut after = used.clone();
    after.revoked_at = Some(at(200));
    after.last_used_at = Some(at(300));
    assert_eq!(
        s.get_api_key(&k.id).await.expect("get"),
        Some(after.clone())
    );
    assert_eq!(s.find_api_key("h1").await.expect("find"), Some(after));

    let missing = id_at(99);
    s.touch_api_key(&missing, at(400))
        .await
        .expect("touching a missing key is no error");
    assert_eq!(s.get_api_key(&missing).await.expect("get"), None);
}

pub async fn images_are_stored_read_and_deleted_byte_for_byte(s: S) {
    let t = id_at(1);
    // Empty, small, and larger than a GridFS chunk (255 KiB) with a partial last chunk.
    let blobs = [
        image(&id_at(10), &t, vec![]),
        ImageBlob {
            content_type: "image/webp".into(),
            ..image(&id_at(11), &t, pattern(1000, 7))
        },
        ImageBlob {
            content_type: "image/jpeg".into(),
            ..image(&id_at(12), &id_at(2), pattern(3 * 261_120 + 17, 9))
        },
    ];
    for b in &blobs {
        s.put_image(b).await.expect("put");
    }
    for b in &blobs {
        assert_eq!(s.get_image(&b.id).await.expect("get").as_ref(), Some(b));
    }
    assert_eq!(s.get_image(&id_at(99)).await.expect("get"), None);

    s.delete_images(&[blobs[0].id.clone(), id_at(98), blobs[2].id.clone()])
        .await
        .expect("delete, one of them missing");
    assert_eq!(s.get_image(&blobs[0].id).await.expect("get"), None);
    assert_eq!(s.get_image(&blobs[2].id).await.expect("get"), None);
    assert_eq!(
        s.get_image(&blobs[1].id).await.expect("get").as_ref(),
        Some(&blobs[1])
    );
    s.delete_images(&[]).await.expect("delete nothing");
    s.delete_images(&[blobs[0].id.clone()])
        .await
        .expect("delete again");
    // An id is free again once deleted.
    s.put_image(&blobs[2]).await.expect("put again");
    assert_eq!(
        s.get_image(&blobs[2].id).await.expect("get").as_ref(),
        Some(&blobs[2])
    );
}

/// A put under an id already stored replaces it (a retried put succeeds), and never leaves the id
/// without an image.
pub async fn an_image_put_again_under_its_id_is_replaced(s: S) {
    let id = id_at(10);
    let first = image(&id, &id_at(1), pattern(300_000, 1));
    s.put_image(&first).await.expect("put");
    s.put_image(&first).await.expect("the same put again");
    assert_eq!(s.get_image(&id).await.expect("get"), Some(first));
    let second = ImageBlob {
        content_type: "image/jpeg".into(),
        ..image(&id, &id_at(2), pattern(1_000, 2))
    };
    s.put_image(&second).await.expect("put other bytes");
    assert_eq!(s.get_image(&id).await.expect("get"), Some(second));
}
