// Command plainrelay is the floor that pgrouter's relay is measured against:
// accept, dial the target, and copy bytes both ways with io.Copy (splice(2)
// between TCP sockets on Linux). It knows nothing of the PostgreSQL protocol.
package main

import (
	"flag"
	"io"
	"log"
	"net"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6440", "address to accept clients on")
	target := flag.String("target", "127.0.0.1:5432", "address to relay each client to")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	log.Printf("relaying %s -> %s", *listen, *target)
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatalf("accept: %v", err)
		}
		go relay(client, *target)
	}
}

// relay owns client and the server conn it dials; it closes both when either
// direction ends, which also ends the other copy.
func relay(client net.Conn, target string) {
	defer client.Close()
	server, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("dial %s: %v", target, err)
		return
	}
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(server, client); done <- struct{}{} }()
	go func() { io.Copy(client, server); done <- struct{}{} }()
	<-done
}
