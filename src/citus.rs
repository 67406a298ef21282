//! Citus glue: an index of a distributed table lives as one index per shard on the workers,
//! and the coordinator holds an empty shell of it. The info functions report the whole by
//! summing what `semantic_index_shards` (sql/semantic_search.sql) reads from every shard.

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::errors::raise;

/// For an index of a Citus distributed table (seen from a node with Citus's metadata), the
/// sums over its shards (each shard once, whatever its placements) of the integer `fields` of
/// its info row; None for any other index. A field a shard's row lacks counts as 0.
pub fn shard_sums(index: pg_sys::Oid, fields: &[&str]) -> Option<Vec<i64>> {
    // Read-only SPI (`select`): pgrx's get_one* helpers run as updates, which assign a
    // transaction id, and a standby has none to give.
    let yes = |sql: &str| -> bool {
        Spi::connect(|client| {
            client
                .select(sql, Some(1), &[index.into()])?
                .first()
                .get::<bool>(1)
        })
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    // Without Citus loaded (its settings unknown) there is nothing to ask SPI.
    // SAFETY: a lookup by a constant name, missing_ok.
    let citus_loaded = unsafe {
        !pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null()
    };
    let distributed = citus_loaded
        && yes(
        "SELECT $1 IS NOT NULL AND to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
    ) && yes(
        "SELECT EXISTS (SELECT FROM pg_index i JOIN pg_dist_partition p ON p.logicalrelid = i.indrelid
                        WHERE i.indexrelid = $1)",
    );
    if !distributed {
        return None;
    }
    let sums: Vec<String> = fields
        .iter()
        .map(|f| format!("coalesce(sum((info->>'{f}')::bigint), 0)::bigint"))
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT DISTINCT ON (shardid) info FROM semantic_index_shards($1::regclass)
                         ORDER BY shardid) s",
        sums.join(", ")
    );
    Spi::connect(|client| {
        let row = client.select(&sql, None, &[index.into()])?.first();
        (1..=fields.len())
            .map(|i| row.get::<i64>(i).map(Option::unwrap_or_default))
            .collect::<Result<Vec<i64>, _>>()
    })
    .map(Some)
    .unwrap_or_else(|e: pgrx::spi::SpiError| {
        raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("cannot sum the shards of the index: {e}"),
            None,
        )
    })
}
