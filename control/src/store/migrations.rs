//! The schema's migrations, embedded in the binary. Listed here rather
//! than expanded by `sqlx::migrate!`: that macro made every build compile
//! sqlx, its drivers and a second bundled SQLite again for the compiler
//! (issue 25, build time). Each migration's checksum is the SHA-384 of its
//! text, as the macro computed it, so databases it migrated stay valid.
use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration: its version, description and file in `migrations/`.
macro_rules! m {
    ($version:literal, $description:literal, $file:literal) => {
        (
            $version,
            $description,
            include_str!(concat!("../../migrations/", $file)),
        )
    };
}

/// Version, description (the file name's, `_` as spaces, as sqlx derives
/// it) and SQL, in order. A new file in `migrations/` must be added here;
/// a test checks that the two agree.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    m!(1, "init", "0001_init.sql"),
    m!(2, "ssh", "0002_ssh.sql"),
    m!(3, "isolation", "0003_isolation.sql"),
    m!(4, "refresh", "0004_refresh.sql"),
    m!(5, "metrics addr", "0005_metrics_addr.sql"),
    m!(6, "node versions", "0006_node_versions.sql"),
    m!(7, "tenant paths", "0007_tenant_paths.sql"),
    m!(8, "events", "0008_events.sql"),
    m!(9, "egress", "0009_egress.sql"),
    m!(10, "snapshots", "0010_snapshots.sql"),
    m!(11, "shares recordings", "0011_shares_recordings.sql"),
    m!(12, "warm", "0012_warm.sql"),
    m!(13, "recording totals", "0013_recording_totals.sql"),
];

/// The migrator for [`MIGRATIONS`].
pub(super) fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is listed, under its own version and
    /// with its own text, and nothing else is.
    #[test]
    fn the_list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .map(|e| {
                let e = e.expect("directory entry");
                let name = e.file_name().into_string().expect("UTF-8 file name");
                let stem = name.strip_suffix(".sql").expect("only .sql files");
                let (version, description) = stem.split_once('_').expect("VERSION_description.sql");
                let sql = std::fs::read_to_string(e.path()).expect("readable migration");
                (
                    version.parse().expect("numeric version"),
                    description.replace('_', " "),
                    sql,
                )
            })
            .collect();
        files.sort();
        let listed: Vec<(i64, String, String)> = MIGRATIONS
            .iter()
            .map(|&(v, d, s)| (v, d.to_string(), s.to_string()))
            .collect();
        assert_eq!(listed, files);
        let migrator = migrator();
        let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        assert_eq!(versions, files.iter().map(|f| f.0).collect::<Vec<_>>());
    }

    /// The checksums are the ones sqlx computes when it reads the directory
    /// itself (as `migrate!` did at build time): a database migrated by an
    /// earlier build opens without a checksum mismatch.
    #[tokio::test]
    async fn checksums_match_what_sqlx_reads_from_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let read = Migrator::new(dir.as_path())
            .await
            .expect("sqlx reads the directory");
        let ours = migrator();
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        assert_eq!(
            read.iter().map(key).collect::<Vec<_>>(),
            ours.iter().map(key).collect::<Vec<_>>()
        );
    }
}
