//! Lifecycle events of libvirt domains, so that a VM stopped or started
//! behind vmdesk's back is seen in seconds rather than at the next poll.
//!
//! libvirt delivers events through an event loop that the process registers
//! before it opens its connections and then runs on a thread of its own
//! ([`start_event_loop`]). A process that does not run the loop must not
//! register it: keepalive messages would go unanswered.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Once;

use virt::connect::Connect;
use virt::sys;
use vmdesk_core::provider::ProviderError;

/// A domain changed its lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The URI of the connection it came on.
    pub uri: String,
    /// The domain's name (the machine).
    pub machine: String,
    /// libvirt's event type (`VIR_DOMAIN_EVENT_*`).
    pub event: i32,
    /// libvirt's detail of the event.
    pub detail: i32,
}

static LOOP: Once = Once::new();
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Registers libvirt's default event loop and runs it on a thread of its own.
/// Call it before the process opens any connection; later calls do nothing.
pub fn start_event_loop() -> Result<(), ProviderError> {
    let mut outcome = Ok(());
    LOOP.call_once(|| match virt::event::event_register_default_impl() {
        Ok(()) => {
            let spawned = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                });
            match spawned {
                Ok(_) => RUNNING.store(true, Ordering::SeqCst),
                Err(e) => outcome = Err(ProviderError::Refused(format!("event loop thread: {e}"))),
            }
        }
        Err(e) => {
            outcome = Err(ProviderError::Refused(format!(
                "event loop: {}",
                e.message()
            )))
        }
    });
    outcome
}

/// Whether this process runs the event loop.
pub fn event_loop_running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// What a registration hands to its callback.
struct Opaque {
    uri: String,
    tx: Sender<LifecycleEvent>,
}

/// Called by libvirt, on the event loop's thread, for each lifecycle event.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Opaque` boxed in `register`; libvirt keeps it
    // until it calls `free_opaque`, which is after the last callback.
    let o = unsafe { &*(opaque as *const Opaque) };
    // SAFETY: `dom` is valid for the duration of the callback; the name it
    // returns belongs to it and is copied before the callback returns.
    let name = unsafe { sys::virDomainGetName(dom) };
    if !name.is_null() {
        // SAFETY: a non-null name from libvirt is a NUL-terminated string.
        let machine = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let _ = o.tx.send(LifecycleEvent {
            uri: o.uri.clone(),
            machine,
            event,
            detail,
        });
    }
    0
}

/// Called by libvirt when the registration goes away.
unsafe extern "C" fn free_opaque(opaque: *mut c_void) {
    // SAFETY: `opaque` came from `Box::into_raw` in `register`, and libvirt
    // calls this once.
    drop(unsafe { Box::from_raw(opaque as *mut Opaque) });
}

type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// Sends every lifecycle event of `conn`'s domains to `tx`. Returns the
/// registration's id.
pub(crate) fn register(
    conn: &Connect,
    uri: &str,
    tx: Sender<LifecycleEvent>,
) -> Result<c_int, ProviderError> {
    let opaque = Box::into_raw(Box::new(Opaque {
        uri: uri.to_owned(),
        tx,
    })) as *mut c_void;
    // SAFETY: libvirt's C API takes every event callback as the generic type
    // and calls it with the signature of the event id it was registered for;
    // `on_lifecycle` has the lifecycle signature.
    let generic =
        unsafe { std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle) };
    // SAFETY: the connection pointer is valid while `conn` lives; `opaque`
    // is freed by libvirt through `free_opaque`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(generic),
            opaque,
            Some(free_opaque),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take `opaque`.
        drop(unsafe { Box::from_raw(opaque as *mut Opaque) });
        return Err(ProviderError::Refused(format!(
            "cannot watch the domains of {uri}"
        )));
    }
    Ok(id)
}

/// Ends a registration made by [`register`].
pub(crate) fn deregister(conn: &Connect, id: c_int) {
    // SAFETY: the connection pointer is valid while `conn` lives; a stale id
    // only makes libvirt return an error.
    let _ = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
}
