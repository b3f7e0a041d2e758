package pool

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// alive reports whether an idle server connection can be lent: the server
// has not closed it and has sent nothing unasked (a FATAL before closing,
// as when PostgreSQL shuts down). One non-blocking peek, no wait: cheap
// enough for every lend.
func alive(c net.Conn) bool {
	if a, ok := c.(interface{ Alive() bool }); ok {
		return a.Alive() // a socket outside Go's poller (package loop)
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var perr error
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	if err != nil {
		return false
	}
	if errors.Is(perr, syscall.EAGAIN) {
		return true
	}
	return false // data pending (n > 0), EOF (n == 0) or an error
}
