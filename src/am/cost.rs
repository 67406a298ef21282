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
        if (*path).indexorderbys.is_null() {
            // A scan without ORDER BY returns every row unordered (scan.rs: every_row): only for
            // a query that can be answered no other way.
            *startup = 1.0e10;
            *total = 1.0e10;
            return;
        }
        let info = (*path).indexinfo;
        if !serves_every_order_by(info, (*path).indexorderbys) {
            // The operator of another metric: the index cannot give that order (a scan would
            // raise); as costly as a disabled plan, so that an exact plan wins.
            *startup = 1.0e10;
            *total = 1.0e10;
            return;
        }
        let tuples = (*info).tuples.max(1.0);
        // Embedding the query and one FAISS search make the start; each returned row is cheap.
        *startup = 100.0 * pg_sys::cpu_operator_cost;
        *total = *startup + tuples * pg_sys::cpu_index_tuple_cost * 0.1;
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
