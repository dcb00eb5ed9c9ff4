//! The data plane's runtime: one thread per worker, each with its own epoll instance, run queue,
//! timers and listening sockets, so a request is read, decided, forwarded and answered on one
//! thread without waking another.
//!
//! It exists for the cost of a request in system calls, which is most of a proxy's cost: on smol's
//! shared executor and one-shot reactor a proxied request took about 30 (a read that finds
//! nothing and re-arms interest after every read, a timer armed per request, executor threads
//! waking each other). Here:
//! - A socket is registered once, edge-triggered, for reading and writing. Its readiness is
//!   remembered: a read known to find nothing is not made, and interest is never re-armed.
//! - A read that returns less than it asked for has drained the socket (TCP hands over all it
//!   holds, up to the buffer's size), so the socket is marked not readable without a read that
//!   returns `EAGAIN`. An edge arrives for any byte that comes later, so nothing is missed.
//! - Timers are entries in the worker's table, checked when the earliest is due: the wait for
//!   events carries the timeout, and no timer file descriptor is armed per request.
//! - A task woken on its worker goes on a local queue. A wake from another thread (shutdown, a
//!   name lookup) goes through a locked queue and an eventfd, which the request path never uses.
//!
//! Everything here is `Send`: a future may be dropped on any thread (at shutdown, say) and
//! nothing breaks; only the hot path assumes it runs on its worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown as HalfClose, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_task::Runnable;
pub use async_task::Task;
use rustix::event::{Timespec, epoll};
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
use smol::io::{AsyncRead, AsyncWrite};

/// Tasks run before the worker looks at its sockets again, so a long queue cannot starve I/O.
const BATCH: usize = 128;
/// Events taken from the kernel per wait.
const EVENTS: usize = 256;
/// The epoll key of the worker's eventfd (registrations use their slab index and generation).
const WAKE_KEY: u64 = u64::MAX;

static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while one of these small critical sections held the lock cannot leave its data
    // half-changed (each is a push, a pop or a slot update), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A vector with stable indices and reuse of freed slots.
#[derive(Debug)]
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    const fn new() -> Self {
        Slab { entries: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(value);
                i
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.entries.get(i).and_then(Option::as_ref)
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.entries.get_mut(i).and_then(Option::take);
        if v.is_some() {
            self.free.push(i);
        }
        v
    }

    fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// Readiness of one registered socket, and who waits for it.
#[derive(Debug)]
struct Source {
    generation: u32,
    readable: AtomicBool,
    writable: AtomicBool,
    /// The peer closed or the socket failed: a read will end the stream (or fail) rather than
    /// find nothing, and no later edge will say so.
    hup: AtomicBool,
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

fn set_waker(slot: &Mutex<Option<Waker>>, waker: &Waker) {
    let mut w = lock(slot);
    match &*w {
        Some(old) if old.will_wake(waker) => {}
        _ => *w = Some(waker.clone()),
    }
}

/// The part of a worker other threads may touch.
#[derive(Debug)]
struct Shared {
    id: u64,
    epoll: OwnedFd,
    wake_fd: OwnedFd,
    remote: Mutex<VecDeque<Runnable>>,
    has_remote: AtomicBool,
    /// The worker is (about to be) blocked in `epoll_wait`: a remote wake must write the eventfd.
    sleeping: AtomicBool,
    closed: AtomicBool,
    sources: Mutex<Slab<Arc<Source>>>,
    next_gen: AtomicU32,
}

impl Shared {
    fn push_remote(&self, r: Runnable) {
        if self.closed.load(Ordering::SeqCst) {
            // The worker is gone: the task is cancelled here (its future dropped).
            drop(r);
            return;
        }
        lock(&self.remote).push_back(r);
        self.has_remote.store(true, Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
        }
    }
}

/// The worker's thread-local half.
struct Local {
    shared: Arc<Shared>,
    ready: RefCell<VecDeque<Runnable>>,
    timers: RefCell<Timers>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Option<Rc<Local>> {
    LOCAL.try_with(|l| l.borrow().clone()).ok().flatten()
}

fn schedule(shared: &Arc<Shared>, r: Runnable) {
    let mut slot = Some(r);
    let _ = LOCAL.try_with(|l| {
        if let Some(l) = l.borrow().as_ref() {
            if l.shared.id == shared.id {
                if let Some(r) = slot.take() {
                    l.ready.borrow_mut().push_back(r);
                }
            }
        }
    });
    if let Some(r) = slot {
        shared.push_remote(r);
    }
}

/// Whether the calling thread is a worker of this runtime.
pub fn on_worker() -> bool {
    local().is_some()
}

/// Runs `future` as a task of the calling thread's worker; off a worker (tests, tools), on one
/// executor thread shared by them instead.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match local() {
        Some(l) => {
            let shared = Arc::clone(&l.shared);
            let (runnable, task) = async_task::spawn(future, move |r| schedule(&shared, r));
            runnable.schedule();
            task
        }
        // Boxed: one copy of the executor's task code for every future type (their outputs are
        // `()` or close to it) instead of one per type; only tests and tools take this way.
        None => off_worker().spawn(Box::pin(future) as Pin<Box<dyn Future<Output = F::Output> + Send>>),
    }
}

/// The executor of tasks spawned off a worker: one thread, started at first use. (smol's global
/// executor is the same, plus a child-process reaper gatelet has no use for.)
fn off_worker() -> &'static smol::Executor<'static> {
    static EXECUTOR: smol::Executor<'static> = smol::Executor::new();
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let started = std::thread::Builder::new()
            .name("gatelet-tasks".into())
            .spawn(|| smol::block_on(EXECUTOR.run(std::future::pending::<()>())));
        if let Err(e) = started {
            log::error!("no thread for tasks off the workers: {e}");
        }
    });
    &EXECUTOR
}

/// Runs a worker on the calling thread: `root()` is spawned as its first task (it can register
/// listeners and spawn more), and the worker runs until that task ends. Tasks still alive then
/// are cancelled.
pub fn run<F, Fut>(root: F) -> io::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let wake_fd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    epoll::add(&epoll_fd, &wake_fd, epoll::EventData::new_u64(WAKE_KEY), epoll::EventFlags::IN)?;
    let shared = Arc::new(Shared {
        id: NEXT_WORKER.fetch_add(1, Ordering::Relaxed),
        epoll: epoll_fd,
        wake_fd,
        remote: Mutex::new(VecDeque::new()),
        has_remote: AtomicBool::new(false),
        sleeping: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        sources: Mutex::new(Slab::new()),
        next_gen: AtomicU32::new(1),
    });
    let local = Rc::new(Local {
        shared: Arc::clone(&shared),
        ready: RefCell::new(VecDeque::new()),
        timers: RefCell::new(Timers::default()),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(Rc::clone(&local)));
    let root = spawn(root());
    let result = event_loop(&local, &root);
    // Cancel what is left on this thread, where the futures were polled.
    shared.closed.store(true, Ordering::SeqCst);
    drop(root);
    let ready = std::mem::take(&mut *local.ready.borrow_mut());
    drop(ready);
    let remote = std::mem::take(&mut *lock(&shared.remote));
    drop(remote);
    LOCAL.with(|l| *l.borrow_mut() = None);
    result
}

fn event_loop(local: &Local, root: &Task<()>) -> io::Result<()> {
    let shared = &*local.shared;
    let blank = epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
    let mut events = vec![blank; EVENTS];
    let mut wakers: Vec<Waker> = Vec::new();
    loop {
        if root.is_finished() {
            return Ok(());
        }
        if shared.has_remote.swap(false, Ordering::SeqCst) {
            let mut remote = std::mem::take(&mut *lock(&shared.remote));
            local.ready.borrow_mut().append(&mut remote);
        }
        let mut ran = 0;
        while ran < BATCH {
            let next = local.ready.borrow_mut().pop_front();
            let Some(r) = next else { break };
            r.run();
            ran += 1;
        }
        if root.is_finished() {
            return Ok(());
        }
        let now = Instant::now();
        let next_due = local.timers.borrow_mut().expire(now, &mut wakers);
        for w in wakers.drain(..) {
            w.wake();
        }
        let busy = !local.ready.borrow().is_empty() || shared.has_remote.load(Ordering::SeqCst);
        let timeout = if busy {
            Some(Timespec { tv_sec: 0, tv_nsec: 0 })
        } else {
            shared.sleeping.store(true, Ordering::SeqCst);
            if shared.has_remote.load(Ordering::SeqCst) {
                shared.sleeping.store(false, Ordering::SeqCst);
                Some(Timespec { tv_sec: 0, tv_nsec: 0 })
            } else {
                next_due.map(|due| {
                    // Rounded up to the millisecond, so the timer is due when the wait ends.
                    let d = due.saturating_duration_since(now) + Duration::from_micros(999);
                    Timespec {
                        tv_sec: d.as_secs().try_into().unwrap_or(rustix::event::Secs::MAX),
                        tv_nsec: i32::try_from(d.subsec_millis() * 1_000_000).unwrap_or(0).into(),
                    }
                })
            }
        };
        let n = match epoll::wait(&shared.epoll, &mut events[..], timeout.as_ref()) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => {
                shared.sleeping.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        };
        shared.sleeping.store(false, Ordering::SeqCst);
        {
            let sources = lock(&shared.sources);
            for ev in &events[..n] {
                let data = ev.data.u64();
                if data == WAKE_KEY {
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&shared.wake_fd, &mut buf);
                    continue;
                }
                let key = (data & 0xffff_ffff) as usize;
                let generation = (data >> 32) as u32;
                let Some(src) = sources.get(key) else { continue };
                if src.generation != generation {
                    continue;
                }
                use epoll::EventFlags as F;
                let f = ev.flags;
                if f.intersects(F::HUP | F::ERR | F::RDHUP) {
                    src.hup.store(true, Ordering::SeqCst);
                }
                if f.intersects(F::IN | F::HUP | F::ERR | F::RDHUP | F::PRI) {
                    src.readable.store(true, Ordering::SeqCst);
                    if let Some(w) = lock(&src.reader).take() {
                        wakers.push(w);
                    }
                }
                if f.intersects(F::OUT | F::HUP | F::ERR) {
                    src.writable.store(true, Ordering::SeqCst);
                    if let Some(w) = lock(&src.writer).take() {
                        wakers.push(w);
                    }
                }
            }
        }
        for w in wakers.drain(..) {
            w.wake();
        }
    }
}

/// A socket registered with its worker's epoll: deregistered (slot freed) when dropped. The
/// kernel forgets the registration when the descriptor closes.
#[derive(Debug)]
struct Registration {
    shared: Arc<Shared>,
    key: usize,
    source: Arc<Source>,
}

impl Registration {
    fn new(fd: impl AsFd, writable: bool) -> io::Result<Registration> {
        let Some(l) = local() else {
            return Err(io::Error::other("gatelet data-plane socket used off a worker thread"));
        };
        let shared = Arc::clone(&l.shared);
        let generation = shared.next_gen.fetch_add(1, Ordering::Relaxed);
        let source = Arc::new(Source {
            generation,
            readable: AtomicBool::new(true),
            writable: AtomicBool::new(writable),
            hup: AtomicBool::new(false),
            reader: Mutex::new(None),
            writer: Mutex::new(None),
        });
        let key = lock(&shared.sources).insert(Arc::clone(&source));
        let data = epoll::EventData::new_u64((u64::from(generation) << 32) | key as u64);
        use epoll::EventFlags as F;
        if let Err(e) = epoll::add(&shared.epoll, fd, data, F::IN | F::OUT | F::RDHUP | F::ET) {
            lock(&shared.sources).remove(key);
            return Err(e.into());
        }
        Ok(Registration { shared, key, source })
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.source;
        if s.readable.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        set_waker(&s.reader, cx.waker());
        if s.readable.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.source;
        if s.writable.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        set_waker(&s.writer, cx.waker());
        if s.writable.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
    }

    fn not_readable(&self) {
        self.source.readable.store(false, Ordering::SeqCst);
    }

    /// A read came back short: the data is drained, but an end of stream (or an error) that
    /// arrived with it is still to be read, and its edge has already been seen.
    fn drained(&self) {
        if !self.source.hup.load(Ordering::SeqCst) {
            self.not_readable();
        }
    }

    fn not_writable(&self) {
        self.source.writable.store(false, Ordering::SeqCst);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.sources).remove(self.key);
    }
}

/// Sockets registered on the calling worker (for tests and metrics).
pub fn registered() -> usize {
    local().map_or(0, |l| lock(&l.shared.sources).len())
}

/// A TCP connection on a worker.
#[derive(Debug)]
pub struct Stream {
    // Declared first: the descriptor closes (leaving the epoll set) before the slot is freed.
    io: TcpStream,
    reg: Registration,
}

impl Stream {
    fn new(fd: OwnedFd, connected: bool) -> io::Result<Stream> {
        let reg = Registration::new(&fd, connected)?;
        Ok(Stream { io: TcpStream::from(fd), reg })
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.reg.poll_readable(cx).is_pending() {
                return Poll::Pending;
            }
            match (&this.io).read(buf) {
                Ok(n) => {
                    // Short: the socket is drained (unless the peer closed: then the end of the
                    // stream is still to be read). Zero is the end, which stays readable.
                    if n > 0 && n < buf.len() {
                        this.reg.drained();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if would_block(&e) => this.reg.not_readable(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Stream {
    /// One write of `len` bytes by `send`, when the socket is writable: a short write means the
    /// send buffer is full, so writability is forgotten until the next edge.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        mut send: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.reg.poll_writable(cx).is_pending() {
                return Poll::Pending;
            }
            match send(&self.io) {
                Ok(n) => {
                    if n < len {
                        self.reg.not_writable();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if would_block(&e) => self.reg.not_writable(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf.len(), |mut io| io.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.get_mut().poll_send(cx, total, |mut io| io.write_vectored(bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.shutdown(HalfClose::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Creates the listening sockets for `addr`, one per worker. With more than one they share the
/// port through `SO_REUSEPORT`, and the kernel spreads new connections over the workers. So that
/// this cannot join a port another program is listening on (two daemons would then split the
/// traffic without a word), a fixed port is first bound once without it.
pub fn bind(addr: &str, count: usize) -> io::Result<Vec<TcpListener>> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address"));
    for a in addr.to_socket_addrs()? {
        match bind_all(a, count.max(1)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn bind_all(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if count > 1 && addr.port() != 0 {
        // Fails with "address in use" when anything holds the port.
        drop(bind_one(addr, false)?);
    }
    let first = bind_one(addr, count > 1)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_one(bound, true)?);
    }
    Ok(all)
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let fd = tcp_socket(addr)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuse_port {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    Ok(TcpListener::from(fd))
}

/// A listening socket registered on a worker.
#[derive(Debug)]
pub struct Listener {
    io: TcpListener,
    reg: Registration,
}

impl Listener {
    /// Registers a socket from [`bind`] on the calling worker.
    pub fn new(io: TcpListener) -> io::Result<Listener> {
        io.set_nonblocking(true)?;
        let reg = Registration::new(&io, true)?;
        Ok(Listener { io, reg })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Resolves when a connection may be waiting.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| self.reg.poll_readable(cx)).await;
    }

    /// Takes a waiting connection, non-blocking with `TCP_NODELAY` set and registered on this
    /// worker; `None` when none is waiting (then [`Listener::readable`] waits for the next).
    pub fn try_accept(&self) -> io::Result<Option<(Stream, SocketAddr)>> {
        loop {
            match rustix::net::acceptfrom_with(&self.io, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok((fd, addr)) => {
                    // Nagle with delayed ACKs costs 40 ms a request.
                    sockopt::set_tcp_nodelay(&fd, true)?;
                    let peer = match addr.map(SocketAddr::try_from) {
                        Some(Ok(a)) => a,
                        _ => TcpStream::from(fd.try_clone()?).peer_addr()?,
                    };
                    return Ok(Some((Stream::new(fd, true)?, peer)));
                }
                Err(rustix::io::Errno::AGAIN) => {
                    self.reg.not_readable();
                    return Ok(None);
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A waiting connection and the place it takes in `limit`, for a server loop that has
    /// waited for [`ConnLimit::room`] and [`Listener::readable`]. `None` when another worker took
    /// the place or the connection first, or when accepting failed (out of descriptors or
    /// memory: logged, and after a short pause rather than a spin on the error); the loop waits
    /// again.
    pub async fn accept_within(&self, limit: &Arc<ConnLimit>) -> Option<(Stream, SocketAddr, ConnPermit)> {
        let permit = limit.try_acquire()?;
        match self.try_accept() {
            Ok(Some((stream, peer))) => Some((stream, peer, permit)),
            Ok(None) => None,
            Err(e) => {
                drop(permit);
                log::warn!("accept: {e}");
                Sleep::after(Duration::from_millis(50)).await;
                None
            }
        }
    }

    /// The next connection (see [`Listener::try_accept`]).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        loop {
            self.readable().await;
            if let Some(c) = self.try_accept()? {
                return Ok(c);
            }
        }
    }
}

/// Connects to `addr` from the calling worker, with `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let fd = tcp_socket(addr)?;
    sockopt::set_tcp_nodelay(&fd, true)?;
    let pending = match rustix::net::connect(&fd, &addr) {
        Ok(()) => false,
        Err(rustix::io::Errno::INPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let stream = Stream::new(fd, !pending)?;
    if pending {
        std::future::poll_fn(|cx| stream.reg.poll_writable(cx)).await;
        if let Err(e) = sockopt::socket_error(&stream.io)? {
            return Err(e.into());
        }
    }
    Ok(stream)
}

/// The worker's timers: a table of deadlines, looked through when the earliest is due. Requests
/// create and drop timers far more often than timers fire, so adding and removing are O(1) and
/// only firing walks the table.
#[derive(Debug, Default)]
struct Timers {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// No live timer is due before this.
    next: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    deadline: Instant,
    waker: Option<Waker>,
}

impl Timers {
    fn insert(&mut self, deadline: Instant, waker: Waker, generation: u32) -> usize {
        if self.next.is_none_or(|n| deadline < n) {
            self.next = Some(deadline);
        }
        let slot = Slot { generation, deadline, waker: Some(waker) };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn get_mut(&mut self, key: usize, generation: u32) -> Option<&mut Slot> {
        self.slots.get_mut(key).filter(|s| s.generation == generation && s.waker.is_some())
    }

    fn remove(&mut self, key: usize, generation: u32) {
        if let Some(s) = self.get_mut(key, generation) {
            s.waker = None;
            self.free.push(key);
        }
    }

    /// Takes the wakers of timers due at `now`; returns when the next one is due.
    fn expire(&mut self, now: Instant, wakers: &mut Vec<Waker>) -> Option<Instant> {
        match self.next {
            Some(n) if n <= now => {}
            other => return other,
        }
        let mut next: Option<Instant> = None;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.waker.is_none() {
                continue;
            }
            if s.deadline <= now {
                if let Some(w) = s.waker.take() {
                    wakers.push(w);
                }
                self.free.push(i);
            } else if next.is_none_or(|n| s.deadline < n) {
                next = Some(s.deadline);
            }
        }
        self.next = next;
        next
    }
}

static NEXT_TIMER_GEN: AtomicU32 = AtomicU32::new(1);

#[derive(Debug)]
enum SleepState {
    New,
    Local { worker: u64, key: usize, generation: u32 },
    Fallback(smol::Timer),
}

/// A timer future: on a worker, an entry in its table; elsewhere, a smol timer.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    state: SleepState,
}

impl Sleep {
    pub fn until(deadline: Instant) -> Sleep {
        Sleep { deadline, state: SleepState::New }
    }

    pub fn after(d: Duration) -> Sleep {
        let now = Instant::now();
        Sleep::until(now.checked_add(d).unwrap_or(now + Duration::from_secs(86_400 * 365)))
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn cancel(&mut self) {
        if let SleepState::Local { worker, key, generation } = self.state {
            if let Some(l) = local() {
                if l.shared.id == worker {
                    if let Ok(mut t) = l.timers.try_borrow_mut() {
                        t.remove(key, generation);
                    }
                }
            }
        }
        self.state = SleepState::New;
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.cancel();
            return Poll::Ready(());
        }
        match &mut this.state {
            SleepState::Fallback(t) => return Pin::new(t).poll(cx).map(|_| ()),
            SleepState::Local { worker, key, generation } => {
                if let Some(l) = local() {
                    if l.shared.id == *worker {
                        if let Ok(mut t) = l.timers.try_borrow_mut() {
                            if let Some(s) = t.get_mut(*key, *generation) {
                                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                    s.waker = Some(cx.waker().clone());
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                }
                // Fired, or polled from another thread: register afresh below.
            }
            SleepState::New => {}
        }
        match local() {
            Some(l) => match l.timers.try_borrow_mut() {
                Ok(mut t) => {
                    let generation = NEXT_TIMER_GEN.fetch_add(1, Ordering::Relaxed);
                    let key = t.insert(this.deadline, cx.waker().clone(), generation);
                    this.state = SleepState::Local { worker: l.shared.id, key, generation };
                    Poll::Pending
                }
                Err(_) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
            None => {
                let mut t = smol::Timer::at(this.deadline);
                let polled = Pin::new(&mut t).poll(cx).map(|_| ());
                this.state = SleepState::Fallback(t);
                polled
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer (header read timeouts) on the workers' timer tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::after(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }
}

/// How many connections the workers serve at once, together. A worker accepts only while there
/// is room, so a client beyond the limit waits in the kernel's queue and is not read.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
    /// Accept loops waiting for room (one per worker at most).
    waiters: Mutex<Vec<Waker>>,
}

impl ConnLimit {
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit { max: max.max(1), open: AtomicUsize::new(0), waiters: Mutex::new(Vec::new()) })
    }

    /// Resolves when there is room (it may be gone again by the time a connection is taken).
    pub async fn room(&self) {
        std::future::poll_fn(|cx| {
            if self.open.load(Ordering::SeqCst) < self.max {
                return Poll::Ready(());
            }
            {
                let mut w = lock(&self.waiters);
                if !w.iter().any(|w| w.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
            }
            if self.open.load(Ordering::SeqCst) < self.max { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }

    /// Takes a place if there is one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        // A compare-and-swap loop (the same on every toolchain: the library's own helper for it
        // was renamed after Rust 1.95).
        let mut n = self.open.load(Ordering::SeqCst);
        while n < self.max {
            match self.open.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(ConnPermit(Arc::clone(self))),
                Err(now) => n = now,
            }
        }
        None
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One place in a [`ConnLimit`].
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *lock(&self.0.waiters));
        for w in waiting {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs `f` on a fresh worker thread and returns its result.
    fn on_worker<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            run(move || async move {
                let _ = tx.send(f.await);
            })
            .expect("worker runs");
        })
        .join()
        .expect("worker thread");
        rx.recv().expect("result")
    }

    #[test]
    fn echo_over_loopback_with_readiness_remembered() {
        let got = on_worker(async {
            let l = Listener::new(bind("127.0.0.1:0", 1).expect("bind").remove(0)).expect("listener");
            let addr = l.local_addr().expect("addr");
            let server = spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 64];
                loop {
                    let n = s.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    s.write_all(&buf[..n]).await.expect("write");
                }
            });
            let mut c = connect(addr).await.expect("connect");
            let mut out = Vec::new();
            for i in 0..50u8 {
                c.write_all(&[i; 10]).await.expect("send");
                let mut back = [0u8; 10];
                c.read_exact(&mut back).await.expect("echo");
                out.extend_from_slice(&back);
            }
            drop(c);
            server.await;
            out
        });
        let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 10]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn large_transfers_survive_full_socket_buffers() {
        // 8 MiB each way is far more than the socket buffers hold, so writes go short and wait
        // for the writable edge, and reads fill the buffer and must not be taken as drained.
        let n = on_worker(async {
            let l = Listener::new(bind("127.0.0.1:0", 1).expect("bind").remove(0)).expect("listener");
            let addr = l.local_addr().expect("addr");
            let server = spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                let data = vec![7u8; 8 << 20];
                s.write_all(&data).await.expect("write");
                s.close().await.expect("close");
            });
            let mut c = connect(addr).await.expect("connect");
            let mut total = 0usize;
            let mut buf = vec![0u8; 65536];
            loop {
                let k = c.read(&mut buf).await.expect("read");
                if k == 0 {
                    break;
                }
                assert!(buf[..k].iter().all(|b| *b == 7));
                total += k;
            }
            server.await;
            total
        });
        assert_eq!(n, 8 << 20);
    }

    #[test]
    fn an_end_of_stream_that_came_with_the_last_data_is_read() {
        // The peer's data and its FIN arrive together, in one edge: the short read that takes the
        // data must not mark the socket drained, or the end of the stream is never read.
        let got = on_worker(async {
            let l = Listener::new(bind("127.0.0.1:0", 1).expect("bind").remove(0)).expect("listener");
            let addr = l.local_addr().expect("addr");
            let mut c = connect(addr).await.expect("connect");
            let (mut s, _) = l.accept().await.expect("accept");
            // The client waits first, so the data and the FIN reach it through the event loop.
            let reader = spawn(async move {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = c.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return all;
                    }
                    all.extend_from_slice(&buf[..n]);
                }
            });
            smol::future::yield_now().await;
            s.write_all(b"last words").await.expect("write");
            s.close().await.expect("close");
            drop(s);
            smol::future::or(async { Some(reader.await) }, async {
                Sleep::after(Duration::from_secs(10)).await;
                None
            })
            .await
        });
        assert_eq!(got.as_deref(), Some(&b"last words"[..]), "the end of the stream was never read");
    }

    #[test]
    fn timers_fire_in_order_and_dropped_ones_do_not() {
        let order = on_worker(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for (i, ms) in [(1u32, 60u64), (2, 20), (3, 40)] {
                let log = Arc::clone(&log);
                tasks.push(spawn(async move {
                    Sleep::after(Duration::from_millis(ms)).await;
                    lock(&log).push(i);
                }));
            }
            // A timer dropped before it is due neither fires nor keeps the worker waiting.
            let dropped = spawn(async {
                Sleep::after(Duration::from_secs(3600)).await;
            });
            drop(dropped);
            for t in tasks {
                t.await;
            }
            lock(&log).clone()
        });
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn wakes_from_other_threads_reach_a_sleeping_worker() {
        let got = on_worker(async {
            let (tx, rx) = smol::channel::bounded::<u32>(1);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let _ = tx.send_blocking(42);
            });
            rx.recv().await.expect("value")
        });
        assert_eq!(got, 42);
    }

    #[test]
    fn connecting_to_a_closed_port_fails() {
        let err = on_worker(async {
            // A port just bound and closed again: nothing listens there.
            let addr = bind("127.0.0.1:0", 1).expect("bind").remove(0).local_addr().expect("addr");
            connect(addr).await.err()
        });
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
    }

    #[test]
    fn a_port_in_use_is_not_shared() {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = first.local_addr().expect("addr").to_string();
        let err = bind(&addr, 2).expect_err("in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn the_connection_limit_waits_for_a_place() {
        on_worker(async {
            let limit = ConnLimit::new(1);
            let held = limit.try_acquire().expect("room");
            assert!(limit.try_acquire().is_none());
            let l2 = Arc::clone(&limit);
            let waiting = spawn(async move {
                l2.room().await;
                l2.try_acquire().expect("room after release")
            });
            // The waiting task has run and found no room.
            for _ in 0..3 {
                smol::future::yield_now().await;
            }
            assert!(!waiting.is_finished());
            drop(held);
            let p = waiting.await;
            assert_eq!(limit.open(), 1);
            drop(p);
            assert_eq!(limit.open(), 0);
        });
    }

    #[test]
    fn off_a_worker_sockets_refuse_and_sleeps_fall_back() {
        let err = smol::block_on(connect("127.0.0.1:9".parse().expect("addr"))).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::Other));
        smol::block_on(Sleep::after(Duration::from_millis(5)));
    }
}
