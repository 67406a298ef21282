//! What differs between the PostgreSQL versions this extension builds for (features pg15 to
//! pg18), in one place: the rest of the pgrx layer calls these and has no `#[cfg]` of its own.

use std::ffi::CStr;

use pgrx::pg_sys;

/// A relation's file identity: tablespace, database and relfilenode (a RelFileNode up to
/// PostgreSQL 15, a RelFileLocator from 16 on).
pub struct RelationFile {
    pub tablespace: u32,
    pub database: u32,
    pub number: u32,
}

/// # Safety
/// `rel` is an open relation.
pub unsafe fn relation_file(rel: pg_sys::Relation) -> RelationFile {
    #[cfg(feature = "pg15")]
    // SAFETY: the caller's open relation.
    let file = unsafe {
        let node = (*rel).rd_node;
        RelationFile {
            tablespace: node.spcNode.into(),
            database: node.dbNode.into(),
            number: node.relNode.into(),
        }
    };
    #[cfg(not(feature = "pg15"))]
    // SAFETY: the caller's open relation.
    let file = unsafe {
        let locator = (*rel).rd_locator;
        RelationFile {
            tablespace: locator.spcOid.into(),
            database: locator.dbOid.into(),
            number: locator.relNumber.into(),
        }
    };
    file
}

extern "C-unwind" {
    // utils/relfilenodemap.h, utils/relfilenumbermap.h from PostgreSQL 16 (not in pgrx's
    // bindings).
    #[cfg(feature = "pg15")]
    fn RelidByRelfilenode(reltablespace: pg_sys::Oid, relfilenode: pg_sys::Oid) -> pg_sys::Oid;
    #[cfg(not(feature = "pg15"))]
    fn RelidByRelfilenumber(reltablespace: pg_sys::Oid, relnumber: pg_sys::Oid) -> pg_sys::Oid;
}

/// The relation of this database whose file is `number` in `tablespace`, or InvalidOid.
///
/// # Safety
/// Called in a transaction (it reads the catalog).
pub unsafe fn relation_of_file(tablespace: u32, number: u32) -> pg_sys::Oid {
    #[cfg(feature = "pg15")]
    let lookup = || unsafe { RelidByRelfilenode(tablespace.into(), number.into()) };
    #[cfg(not(feature = "pg15"))]
    let lookup = || unsafe { RelidByRelfilenumber(tablespace.into(), number.into()) };
    // SAFETY: PostgreSQL's C code: an ERROR in it unwinds through pgrx's guard.
    unsafe { pg_sys::submodules::ffi::pg_guard_ffi_boundary(lookup) }
}

/// One entry of an access method's reloptions table, for `build_reloptions`. PostgreSQL 18
/// added `isset_offset`, which these options do not use.
pub fn reloption(
    name: &'static CStr,
    kind: pg_sys::relopt_type::Type,
    offset: usize,
) -> pg_sys::relopt_parse_elt {
    pg_sys::relopt_parse_elt {
        optname: name.as_ptr(),
        opttype: kind,
        offset: offset as i32,
        #[cfg(feature = "pg18")]
        isset_offset: 0,
    }
}

/// Adds a page to the end of `rel`'s main fork and returns its buffer, pinned and exclusively
/// locked.
///
/// # Safety
/// `rel` is an open relation that the caller may write.
pub unsafe fn extend_relation(rel: pg_sys::Relation) -> pg_sys::Buffer {
    #[cfg(feature = "pg15")]
    // SAFETY: P_NEW under the relation extension lock, as PostgreSQL 15's own AMs extend.
    unsafe {
        pg_sys::LockRelationForExtension(rel, pg_sys::ExclusiveLock as _);
        let buffer = pg_sys::ReadBufferExtended(
            rel,
            pg_sys::ForkNumber::MAIN_FORKNUM,
            pg_sys::InvalidBlockNumber, // P_NEW
            pg_sys::ReadBufferMode::RBM_NORMAL,
            std::ptr::null_mut(),
        );
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_EXCLUSIVE as _);
        pg_sys::UnlockRelationForExtension(rel, pg_sys::ExclusiveLock as _);
        buffer
    }
    #[cfg(not(feature = "pg15"))]
    // SAFETY: ExtendBufferedRel takes the extension lock itself; EB_LOCK_FIRST returns the
    // new page's buffer locked exclusively before anyone else can see it.
    unsafe {
        pg_sys::ExtendBufferedRel(
            pg_sys::BufferManagerRelation {
                rel,
                smgr: std::ptr::null_mut(),
                relpersistence: 0,
            },
            pg_sys::ForkNumber::MAIN_FORKNUM,
            std::ptr::null_mut(),
            pg_sys::ExtendBufferedFlags::EB_LOCK_FIRST,
        )
    }
}

/// Lets VACUUM honour vacuum_cost_delay and check for interrupts in a long loop.
pub fn vacuum_delay_point() {
    // SAFETY: called from a VACUUM's backend, outside any critical section.
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::vacuum_delay_point()
    };
    // SAFETY: as above; PostgreSQL 18 asks whether it is ANALYZE that calls.
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::vacuum_delay_point(false)
    };
}

/// Whether the current user owns (or is a member of the role owning) relation `oid`.
pub fn owns_relation(oid: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    // SAFETY: a catalog lookup; a missing relation raises.
    unsafe {
        pg_sys::pg_class_ownercheck(oid, pg_sys::GetUserId())
    }
    #[cfg(not(feature = "pg15"))]
    // SAFETY: as above, through the catalog-generic check of PostgreSQL 16 on.
    unsafe {
        pg_sys::object_ownercheck(pg_sys::RelationRelationId, oid, pg_sys::GetUserId())
    }
}
