//! The desk's own OS catalog: the images imported into its data directory,
//! kept in its SQLite file in both modes (on a team store, too, images are
//! files of the desk).

use rusqlite::params;
use serde_json::json;

use super::{already_exists, Embedded};
use crate::error::Result;
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;
use crate::team::{Catalog, CatalogImage};

impl Catalog for Embedded<'_> {
    fn os_images(&self) -> Result<Vec<CatalogImage>> {
        let conn = self.core.db();
        let mut stmt = conn.prepare_cached(
            "SELECT name, file, bytes, sha256, min_ram_mb, min_disk_gb FROM os_images ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CatalogImage {
                name: r.get(0)?,
                file: r.get(1)?,
                bytes: r.get(2)?,
                sha256: r.get(3)?,
                min_ram_mb: r.get(4)?,
                min_disk_gb: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn os_add(&self, actor: &str, image: &CatalogImage) -> Result<()> {
        self.core.write_local(|tx| {
            tx.execute(
                "INSERT INTO os_images (name, file, bytes, sha256, created_at, min_ram_mb, min_disk_gb)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    image.name,
                    image.file,
                    image.bytes,
                    image.sha256,
                    now(),
                    image.min_ram_mb,
                    image.min_disk_gb
                ],
            )
            .map_err(already_exists("OS", &image.name))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "os.import",
                    actor,
                    json!({"os": image.name, "bytes": image.bytes, "sha256": image.sha256,
                           "min_ram_mb": image.min_ram_mb, "min_disk_gb": image.min_disk_gb}),
                ),
            )?;
            Ok(())
        })
    }

    fn os_remove(&self, actor: &str, name: &str) -> Result<()> {
        self.core.write_local(|tx| {
            tx.execute("DELETE FROM os_images WHERE name = ?1", params![name])?;
            events::record(
                tx,
                NewEvent::info(EventType::Admin, "os.remove", actor, json!({"os": name})),
            )?;
            Ok(())
        })
    }

    fn os_minimum(
        &self,
        actor: &str,
        name: &str,
        (ram, disk): (i64, i64),
        (was_ram, was_disk): (i64, i64),
    ) -> Result<()> {
        self.core.write_local(|tx| {
            tx.execute(
                "UPDATE os_images SET min_ram_mb = ?2, min_disk_gb = ?3 WHERE name = ?1",
                params![name, ram, disk],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "os.minimum",
                    actor,
                    json!({"os": name, "min_ram_mb": ram, "min_disk_gb": disk,
                           "was": {"min_ram_mb": was_ram, "min_disk_gb": was_disk}}),
                ),
            )?;
            Ok(())
        })
    }
}
