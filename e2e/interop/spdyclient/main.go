// spdyclient speaks to berth's streaming server the way kubelet's and
// crictl's clients do, through spdystream (the SPDY library under
// client-go): it upgrades with X-Stream-Protocol-Version, opens the
// streams by streamtype and copies them. Used by the e2e tests as an
// independent SPDY implementation.
//
//	spdyclient exec URL [-stdin] [-tty]   stdin/stdout/stderr relayed; the error stream goes to $SPDYCLIENT_STATUS
//	spdyclient portforward URL PORT        sends stdin to the port, prints what comes back
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/docker/spdystream"
)

func dial(raw string, protocols []string) (*spdystream.Connection, string) {
	u, err := url.Parse(raw)
	if err != nil {
		fail("url: %v", err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n", u.RequestURI(), u.Host)
	for _, p := range protocols {
		req += "X-Stream-Protocol-Version: " + p + "\r\n"
	}
	req += "\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		fail("write: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fail("response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fail("status %d: %s", resp.StatusCode, body)
	}
	if br.Buffered() > 0 {
		fail("unexpected bytes after the upgrade response")
	}
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.Header.Get("X-Stream-Protocol-Version")
}

func stream(sc *spdystream.Connection, headers http.Header) *spdystream.Stream {
	s, err := sc.CreateStream(headers, nil, false)
	if err != nil {
		fail("create stream %v: %v", headers, err)
	}
	if err := s.WaitTimeout(10 * time.Second); err != nil {
		fail("no reply for stream %v: %v", headers, err)
	}
	return s
}

func kind(t string) http.Header {
	h := http.Header{}
	h.Set("streamType", t)
	return h
}

func fail(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyclient: "+f+"\n", a...)
	os.Exit(99)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: spdyclient exec|portforward URL ...")
	}
	switch os.Args[1] {
	case "exec":
		withStdin, tty := false, false
		for _, a := range os.Args[3:] {
			withStdin = withStdin || a == "-stdin"
			tty = tty || a == "-tty"
		}
		sc, proto := dial(os.Args[2], []string{"v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"})
		if proto != "v4.channel.k8s.io" {
			fail("negotiated %q", proto)
		}
		errStream := stream(sc, kind("error"))
		var stdin *spdystream.Stream
		if withStdin {
			stdin = stream(sc, kind("stdin"))
		}
		stdout := stream(sc, kind("stdout"))
		var stderr *spdystream.Stream
		if !tty {
			stderr = stream(sc, kind("stderr"))
		}
		if tty {
			resize := stream(sc, kind("resize"))
			fmt.Fprintf(resize, "{\"Width\":%d,\"Height\":%d}\n", 91, 17)
		}
		if stdin != nil {
			go func() {
				io.Copy(stdin, os.Stdin)
				stdin.Close()
			}()
		}
		errc := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(errStream)
			errc <- b
		}()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(os.Stdout, stdout) }()
		if stderr != nil {
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(os.Stderr, stderr) }()
		}
		wg.Wait()
		status := <-errc
		if path := os.Getenv("SPDYCLIENT_STATUS"); path != "" {
			if err := os.WriteFile(path, status, 0o600); err != nil {
				fail("status: %v", err)
			}
		}
		sc.Close()
	case "portforward":
		port, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail("port: %v", err)
		}
		sc, _ := dial(os.Args[2], []string{"portforward.k8s.io"})
		h := http.Header{}
		h.Set("streamType", "error")
		h.Set("port", strconv.Itoa(port))
		h.Set("requestID", "0")
		errStream := stream(sc, h)
		h2 := http.Header{}
		h2.Set("streamType", "data")
		h2.Set("port", strconv.Itoa(port))
		h2.Set("requestID", "0")
		data := stream(sc, h2)
		go func() {
			io.Copy(data, os.Stdin)
			data.Close()
		}()
		go func() {
			b, _ := io.ReadAll(errStream)
			if len(b) > 0 {
				fmt.Fprintf(os.Stderr, "error stream: %s\n", b)
			}
		}()
		io.Copy(os.Stdout, data)
		sc.Close()
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
