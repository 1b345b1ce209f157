//! data: URLs and local files.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::*;

#[tokio::test]
async fn data_urls() {
    let policy = MediaPolicy::default();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let png = b64(&samples::png(3, 2));
    let image = load_image(&format!("data:image/png;base64,{png}"), &policy)
        .await
        .unwrap();
    assert_eq!(
        (image.format, image.width, image.height),
        (ImageKind::Png, 3, 2)
    );
    let wrapped: String = png
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    load_image(&format!("  data:;base64,{wrapped}"), &policy)
        .await
        .unwrap();
    // Declared PNG, really WebP: the bytes win.
    let webp = b64(&samples::encode(ImageKind::Webp, 2, 2));
    let image = load_image(&format!("data:image/png;base64,{webp}"), &policy)
        .await
        .unwrap();
    assert_eq!(image.format, ImageKind::Webp);

    let small = MediaPolicy {
        max_image_bytes: 64,
        ..MediaPolicy::default()
    };
    let err = load_image(&format!("data:image/png;base64,{png}"), &small)
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge { limit: 64 }), "{err}");

    for (url, want) in [
        ("data:image/png;base64,not*base64", "not valid base64"),
        ("data:image/png,plain", "only base64"),
        (
            "data:image/png;base64,PGh0bWw+",
            "not a PNG, JPEG, WebP or GIF",
        ),
        (
            "data:image/png;base64,iVBORw0KGgo=",
            "PNG image header is truncated",
        ),
    ] {
        let err = load_image(url, &policy).await.unwrap_err();
        assert!(err.to_string().contains(want), "{url}: {err}");
    }
    let wide = b64(&samples::png(5000, 10));
    let err = load_image(&format!("data:image/png;base64,{wide}"), &policy)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("5000x10"), "{err}");
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("hearth-media-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_url(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

#[tokio::test]
async fn local_files_only_from_inside_the_directory() {
    let root = TempDir::new("files");
    let dir = root.0.join("media");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("cat.png"), samples::png(3, 2)).unwrap();
    std::fs::write(dir.join("big.png"), vec![0u8; 2000]).unwrap();
    std::fs::write(root.0.join("outside.png"), samples::png(3, 2)).unwrap();
    std::os::unix::fs::symlink(root.0.join("outside.png"), dir.join("link.png")).unwrap();
    std::os::unix::fs::symlink(&root.0, dir.join("up")).unwrap();
    std::os::unix::fs::symlink(dir.join("cat.png"), dir.join("inner-link.png")).unwrap();
    nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let alias = root.0.join("alias");
    std::os::unix::fs::symlink(&dir, &alias).unwrap();

    let policy = MediaPolicy {
        allowed_media_dir: Some(dir.clone()),
        max_image_bytes: 1000,
        ..MediaPolicy::default()
    };
    for ok in [
        file_url(&dir.join("cat.png")),
        dir.join("cat.png").display().to_string(),
        file_url(&dir.join("inner-link.png")),
        format!("file://localhost{}", dir.join("cat.png").display()),
        file_url(&dir.join("sub/../cat.png")),
    ] {
        let image = load_image(&ok, &policy)
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!((image.width, image.height), (3, 2));
    }
    // The configured directory may itself be reached through a symlink.
    let via_alias = MediaPolicy {
        allowed_media_dir: Some(alias.clone()),
        ..policy.clone()
    };
    load_image(&file_url(&alias.join("cat.png")), &via_alias)
        .await
        .unwrap();

    let outside =
        |r: Result<LoadedImage, MediaError>| matches!(r, Err(MediaError::OutsideMediaDir { .. }));
    for bad in [
        file_url(&root.0.join("outside.png")),
        file_url(&dir.join("link.png")),
        file_url(&dir.join("up/outside.png")),
        format!("{}/../outside.png", dir.display()),
        format!("file://{}/../outside.png", dir.display()),
        "file:///etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        // Outside and missing: refused as outside, so existence elsewhere cannot be probed.
        file_url(&root.0.join("missing.png")),
        "/nonexistent/x.png".to_owned(),
    ] {
        assert!(outside(load_image(&bad, &policy).await), "{bad}");
    }
    let err = load_image(&file_url(&dir.join("missing.png")), &policy)
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::FileNotFound { .. }), "{err}");
    for not_file in [dir.join("sub"), dir.join("fifo")] {
        let err = load_image(&file_url(&not_file), &policy).await.unwrap_err();
        assert!(matches!(err, MediaError::NotARegularFile { .. }), "{err}");
    }
    let err = load_image(&file_url(&dir.join("big.png")), &policy)
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge { limit: 1000 }), "{err}");
    let err = load_image(
        &format!("file://otherhost{}", dir.join("cat.png").display()),
        &policy,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MediaError::InvalidUrl { .. }), "{err}");

    // Without the option, even a file inside is refused, naming the flag.
    let err = load_image(&file_url(&dir.join("cat.png")), &MediaPolicy::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--allowed-media-dir"), "{err}");
}

#[test]
fn image_count_is_checked() {
    let policy = MediaPolicy::default();
    assert!(policy.check_count(5).is_ok());
    let err = policy.check_count(6).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request has 6 images; at most 5 are allowed"
    );
}
