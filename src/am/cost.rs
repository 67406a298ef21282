//! The planner's view: the index only serves `ORDER BY col <op> query` for the operator of its
//! metric (operators.rs), where it reads a few candidates instead of computing the distance of
//! every row (for text, an embedding per row).

use pgrx::pg_sys;
use pgrx::prelude::*;

#[pg_guard]
#[allow(clippy::too_many_arguments)] // the signature PostgreSQL calls
pub unsafe extern "C-unwind" fn amcostestimate(
    _root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    _loop_count: f64,
    startup: *mut pg_sys::Cost,
    total: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner calls this with valid path and output pointers.
    unsafe {
        *correlation = 0.0;
        *pages = 1.0;
        *selectivity = 1.0;
        // A scan without ORDER BY (PostgreSQL 18 plans one for `SELECT count(*)` when
        // sequential scans are disabled) would return the indexed rows only, not those whose
        // value is NULL; with the operator of another metric the index cannot give the order
        // (a scan would raise). Neither is ever taken, even when sequential scans are disabled.
        if (*path).indexorderbys.is_null()
            || !serves_every_order_by((*path).indexinfo, (*path).indexorderbys)
        {
            never(path, startup, total);
            return;
        }
        let info = (*path).indexinfo;
        let tuples = (*info).tuples.max(1.0);
        // Embedding the query and one FAISS search make the start; each returned row is cheap.
        *startup = 100.0 * pg_sys::cpu_operator_cost;
        *total = *startup + tuples * pg_sys::cpu_index_tuple_cost * 0.1;
    }
}

/// Costs that keep `path` out of every plan: infinite, and on PostgreSQL 18, which prefers any
/// plan to one with disabled nodes whatever their costs, more disabled nodes than a disabled
/// sequential scan has (as pgvector does).
unsafe fn never(
    path: *mut pg_sys::IndexPath,
    startup: *mut pg_sys::Cost,
    total: *mut pg_sys::Cost,
) {
    // SAFETY: the planner's path and output pointers (the caller's).
    unsafe {
        *startup = f64::INFINITY;
        *total = f64::INFINITY;
        #[cfg(feature = "pg18")]
        {
            (*path).path.disabled_nodes = 2;
        }
        #[cfg(not(feature = "pg18"))]
        let _ = path;
    }
}

/// Whether the faiss index of `info` ranks in the order of each ORDER BY operator of the path.
unsafe fn serves_every_order_by(
    info: *mut pg_sys::IndexOptInfo,
    order_bys: *mut pg_sys::List,
) -> bool {
    // SAFETY: the planner holds a lock on the index, whose OptInfo and ORDER BY list it gave.
    unsafe {
        if (*info).relam != pg_sys::get_index_am_oid(c"faiss".as_ptr(), true) {
            return true; // bm25: one operator
        }
        let index = pg_sys::index_open((*info).indexoid, pg_sys::NoLock as pg_sys::LOCKMODE);
        let meta = super::storage::read_meta(index);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        let class = super::operators::OperatorClass::of_plan(info);
        let order_bys = pgrx::PgList::<pg_sys::Node>::from_pg(order_bys);
        let all = order_bys.iter_ptr().all(|expr| {
            if (*expr).type_ != pg_sys::NodeTag::T_OpExpr {
                return false;
            }
            // An ORDER BY operator's entry (get_op_opfamily_strategy finds search operators only).
            let (mut strategy, mut left, mut right) = (0, pg_sys::InvalidOid, pg_sys::InvalidOid);
            pg_sys::get_op_opfamily_properties(
                (*(expr as *mut pg_sys::OpExpr)).opno,
                *(*info).opfamily,
                true,
                &raw mut strategy,
                &raw mut left,
                &raw mut right,
            );
            super::operators::serves(&meta, &class, strategy as u16)
        });
        all
    }
}
