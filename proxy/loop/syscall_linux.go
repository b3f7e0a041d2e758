package loop

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's reads and writes are on non-blocking sockets and return at
// once, so they skip the scheduler's bookkeeping for system calls that may
// block (RawSyscall instead of Syscall). They are recvfrom and sendto, not
// read and write: a socket call skips the file-position lock and the VFS
// layer, a few percent of the relay's CPU in a profile.

func rawRead(fd int, b []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

// rawPeek looks at one byte without taking it: EAGAIN means nothing came.
func rawPeek(fd int) unix.Errno {
	var b [1]byte
	_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return e
}

func rawWrite(fd int, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

// epollWait waits for events. raw waits at most waitSlice ms and keeps
// the goroutine's P (see thread.run); otherwise it waits for as long as it
// takes, through the scheduler.
func epollWait(epfd int, events []unix.EpollEvent, raw bool) (int, unix.Errno) {
	var n uintptr
	var e unix.Errno
	if raw {
		n, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), waitSlice, 0, 0)
	} else {
		n, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// rawAccept accepts a connection without blocking and returns its peer's
// address. x/sys/unix's Accept4 asks the kernel for the socket's protocol
// on every call (to tell L2TP sockets apart), one more system call per
// connection than accepting needs.
func rawAccept(fd int) (int, *net.TCPAddr, unix.Errno) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, nil, e
	}
	// The address and its IP's bytes in one allocation.
	peer := &struct {
		addr net.TCPAddr
		ip   [net.IPv6len]byte
	}{}
	addr := &peer.addr
	switch rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		peer.ip = [16]byte{10: 0xff, 11: 0xff, 12: a.Addr[0], 13: a.Addr[1], 14: a.Addr[2], 15: a.Addr[3]} // as net.IPv4
		addr.IP = peer.ip[:]
		addr.Port = int(a.Port>>8 | a.Port<<8)
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		peer.ip = a.Addr
		addr.IP = peer.ip[:]
		addr.Port = int(a.Port>>8 | a.Port<<8)
	}
	return int(nfd), addr, 0
}
