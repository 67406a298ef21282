//! The planner's view: the index only serves `ORDER BY col <=> query`, where it reads a few
//! candidates instead of computing the distance of every row (for text, an embedding per row).

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
        let tuples = (*(*path).indexinfo).tuples.max(1.0);
        // Embedding the query and one FAISS search make the start; each returned row is cheap.
        *startup = 100.0 * pg_sys::cpu_operator_cost;
        *total = *startup + tuples * pg_sys::cpu_index_tuple_cost * 0.1;
    }
}
