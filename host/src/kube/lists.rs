//! How a watch lists first: a streaming list (a watch with `sendInitialEvents`, one object at a
//! time from the API server's watch cache), or pages of a LIST where the server refuses that.
//!
//! A paged list decodes a whole page before the first object of it reaches the cache, and every
//! kind of both sides lists at once on a start; a streaming list holds one event at a time. The
//! choice is made by what the server answers, never by a setting: a server without WatchList
//! rejects the parameters of the first watch with 422 Invalid or 400 Bad Request (kcp v0.26:
//! "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
//! kube-apiserver before 1.27 and with the gate off answer alike), and from then on that server
//! (one [`ListMode`] per client) is listed in pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::StreamExt;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use tracing::info;

/// Objects per page of a paged list. A page is decoded whole (its text, then a
/// `serde_json::Value` tree per object, managedFields included, before the caches shrink them),
/// and every reflector of both sides lists at once on a start: with kube's default of 500, the
/// pages in flight were 18 MiB of the 71 MiB heap peak at 10,000 objects (docs/benchmarks.md,
/// section 4). 100 cuts that by five, for four times as many list requests.
pub const LIST_PAGE: u32 = 100;

/// How the watches of each side list: streaming, or in pages where the server refuses that
/// ([`watch`]), learnt once per side.
#[derive(Debug, Default)]
pub struct ListModes {
    /// The upstream server's.
    pub up: Arc<ListMode>,
    /// The downstream server's.
    pub down: Arc<ListMode>,
}

impl ListModes {
    /// Both sides try streaming first; with `streaming` false (the `WatchListClient` feature
    /// gate off), both list in pages from the start.
    pub fn new(streaming: bool) -> Self {
        let mode = || if streaming { ListMode::shared() } else { ListMode::paged() };
        Self { up: mode(), down: mode() }
    }
}

/// What one API server offers for a watch's first list, as learnt from its answers.
#[derive(Debug, Default)]
pub struct ListMode(AtomicU8);

const UNKNOWN: u8 = 0;
const STREAMING: u8 = 1;
const PAGED: u8 = 2;

/// How a watch lists, as [`ListMode::current`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Not known yet: a streaming list is tried.
    Unknown,
    /// The server streamed a list.
    Streaming,
    /// The server refused a streaming list: pages.
    Paged,
}

impl ListMode {
    /// A mode shared by the watches of one client.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A mode that lists in pages from the start (the `WatchListClient` gate off).
    pub fn paged() -> Arc<Self> {
        Arc::new(Self(AtomicU8::new(PAGED)))
    }

    /// What is known of the server.
    pub fn current(&self) -> Listing {
        match self.0.load(Ordering::Relaxed) {
            STREAMING => Listing::Streaming,
            PAGED => Listing::Paged,
            _ => Listing::Unknown,
        }
    }

    /// Records that the server streamed a list (unless it was found paged); true the first time.
    fn streamed(&self) -> bool {
        self.0.compare_exchange(UNKNOWN, STREAMING, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Records that the server refused a streaming list; true the first time.
    fn refused(&self) -> bool {
        self.0.swap(PAGED, Ordering::Relaxed) != PAGED
    }
}

/// Whether a watcher's error is the server refusing a streaming list: the first watch (with
/// `sendInitialEvents=true&resourceVersionMatch=NotOlderThan`) answered 422 Invalid (the
/// WatchList feature gate off, or a server that validates but does not know the parameters) or
/// 400 Bad Request. Nothing else is: a 403, a 404, a 410 or a lost connection is retried or
/// handled as it would be with pages.
pub fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 422 || s.code == 400)
}

/// The event stream of one reflector.
pub type EventStream = futures::stream::BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>>;

/// A watcher over `api` that lists first with a streaming list, or in pages of [`LIST_PAGE`]
/// once `mode` knows the server refuses that (learnt here on the first refusal, which is not
/// passed on: the pages follow at once). The first streamed list and the first refusal of a
/// `side` are logged, naming the `kind`.
pub fn watch(
    api: Api<DynamicObject>,
    config: watcher::Config,
    mode: Arc<ListMode>,
    side: &'static str,
    kind: String,
) -> EventStream {
    let paged = |api, config: watcher::Config| watcher::watcher(api, config.page_size(LIST_PAGE)).boxed();
    if mode.current() == Listing::Paged {
        return paged(api, config);
    }
    let streaming = watcher::watcher(api.clone(), config.clone().streaming_lists()).boxed();
    let state = (streaming, Some((api, config)));
    futures::stream::unfold(state, move |(mut events, mut fallback)| {
        let (mode, kind) = (Arc::clone(&mode), kind.clone());
        async move {
            loop {
                let ev = events.next().await?;
                match &ev {
                    Err(e) if fallback.is_some() && refuses_streaming(e) => {
                        if mode.refused() {
                            let answer = match e {
                                watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.message.clone(),
                                other => other.to_string(),
                            };
                            info!(side, kind = %kind, answer, "the server refuses streaming lists; listing in pages");
                        }
                        if let Some((api, config)) = fallback.take() {
                            events = paged(api, config);
                        }
                        continue;
                    }
                    Ok(Event::InitDone) if fallback.is_some() && mode.streamed() => {
                        info!(side, kind = %kind, "the server streams lists");
                    }
                    _ => {}
                }
                return Some((ev, (events, fallback)));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_list_client_gate_off_lists_in_pages_from_the_start() {
        let on = ListModes::new(true);
        assert_eq!((on.up.current(), on.down.current()), (Listing::Unknown, Listing::Unknown));
        let off = ListModes::new(false);
        assert_eq!((off.up.current(), off.down.current()), (Listing::Paged, Listing::Paged));
        assert!(!off.up.streamed(), "a paged server is never taken for a streaming one");
    }

    fn mk_status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("sendInitialEvents is forbidden", "Invalid").with_code(code))
    }

    #[test]
    fn only_a_422_or_400_to_the_first_watch_means_the_server_refuses_a_streaming_list() {
        let cases: Vec<(watcher::Error, bool)> = vec![
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(422))), true),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(400))), true),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(403))), false),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(404))), false),
            (watcher::Error::WatchStartFailed(kube::Error::Api(mk_status(500))), false),
            (watcher::Error::WatchError(mk_status(422)), false),
            (watcher::Error::WatchError(mk_status(410)), false),
            (watcher::Error::InitialListFailed(kube::Error::Api(mk_status(422))), false),
            (watcher::Error::NoResourceVersion, false),
        ];
        for (e, want) in cases {
            assert_eq!(refuses_streaming(&e), want, "{e}");
        }
    }

    #[test]
    fn a_refusal_is_remembered_and_wins_over_an_earlier_stream() {
        let mode = ListMode::default();
        assert_eq!(mode.current(), Listing::Unknown);
        assert!(mode.streamed());
        assert!(!mode.streamed(), "logged once");
        assert_eq!(mode.current(), Listing::Streaming);
        assert!(mode.refused());
        assert!(!mode.refused(), "logged once");
        assert!(!mode.streamed());
        assert_eq!(mode.current(), Listing::Paged);
    }
}
