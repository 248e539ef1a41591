//go:build unix

package transport

import "syscall"

// open reports whether the peer has not closed the connection, with a
// peek that does not wait: an idle connection holds nothing to read, so
// anything there (the end of the stream, an error, stray bytes) means it
// is done.
func open(raw syscall.RawConn) bool {
	if raw == nil {
		return true
	}
	alive := false
	var b [1]byte
	err := raw.Read(func(fd uintptr) bool {
		_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = e == syscall.EAGAIN || e == syscall.EWOULDBLOCK
		return true // never wait
	})
	return err == nil && alive
}
