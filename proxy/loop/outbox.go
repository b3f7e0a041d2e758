//go:build linux

package loop

import (
	"sync"

	"golang.org/x/sys/unix"
)

// outbox holds the bytes a socket did not take yet. While it is not empty
// the socket's writer is not read, so a slow reader slows its writer
// instead of growing a buffer; its buffer comes from a pool and exists
// only while the reader is behind.
type outbox struct {
	pending []byte
	backing *[]byte // the pooled buffer under pending
}

// Pending buffers only exist while a reader is slower than its writer;
// they are recycled instead of kept by idle sockets.
var bufs = sync.Pool{New: func() any { b := make([]byte, 0, readBuf); return &b }}

// send writes b to fd, or queues it behind the bytes already waiting, and
// keeps what fd does not take at once. It returns only a hard error.
func (o *outbox) send(fd int, b []byte) unix.Errno {
	if len(o.pending) > 0 {
		o.pending = append(o.pending, b...)
		return 0
	}
	w, errno := rawWrite(fd, b)
	if hardErrno(errno) {
		return errno
	}
	if w < 0 {
		w = 0
	}
	if w < len(b) {
		o.backing = bufs.Get().(*[]byte)
		o.pending = append((*o.backing)[:0], b[w:]...)
	}
	return 0
}

// drain writes what waits, releasing the buffer once all of it has gone.
// It returns only a hard error.
func (o *outbox) drain(fd int) unix.Errno {
	w, errno := rawWrite(fd, o.pending)
	if hardErrno(errno) {
		return errno
	}
	if w > 0 {
		o.pending = o.pending[w:]
	}
	if len(o.pending) == 0 {
		o.release()
	}
	return 0
}

func (o *outbox) release() {
	if o.backing != nil {
		bufs.Put(o.backing)
	}
	o.backing = nil
	o.pending = nil
}

// hardErrno is an error other than "try again".
func hardErrno(errno unix.Errno) bool {
	return errno != 0 && errno != unix.EAGAIN && errno != unix.EINTR
}
