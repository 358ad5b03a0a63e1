// streamclient speaks to berth's streaming server the way client-go's
// executors do (kubectl, kubelet's proxy and the CRI client tools use the
// same code), through the libraries under client-go: spdystream for SPDY/3.1
// and gorilla/websocket for WebSocket. The e2e tests use it as an
// independent implementation of both transports.
//
//	streamclient exec URL [-stdin] [-tty] [-ws]   stdin/stdout/stderr relayed; the status goes to $STREAMCLIENT_STATUS
//	streamclient portforward URL PORT [-tunnel]   sends stdin to the port, prints what comes back
//
// exec also serves attach (same streams). -ws uses the WebSocket channel
// protocol (v5.channel.k8s.io, as client-go's WebSocket executor), which
// must end with a Close frame of status 1000: anything else is an error,
// as it is for client-go. -tunnel carries SPDY through a WebSocket
// (SPDY/3.1+portforward.k8s.io, KEP-4006), as kubectl port-forward does.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/spdystream"
	"github.com/gorilla/websocket"
)

func fail(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "streamclient: "+f+"\n", a...)
	os.Exit(99)
}

func has(args []string, flag string) bool {
	for _, a := range args {
		if a == flag {
			return true
		}
	}
	return false
}

func writeStatus(status []byte) {
	if path := os.Getenv("STREAMCLIENT_STATUS"); path != "" {
		if err := os.WriteFile(path, status, 0o600); err != nil {
			fail("status: %v", err)
		}
	}
}

// ---------------------------------------------------------------- SPDY

func dialSPDY(raw string, protocols []string) (*spdystream.Connection, string) {
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
	return serveSPDY(conn), resp.Header.Get("X-Stream-Protocol-Version")
}

func serveSPDY(conn net.Conn) *spdystream.Connection {
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc
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

func execSPDY(raw string, withStdin, tty bool) {
	sc, proto := dialSPDY(raw, []string{"v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"})
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
	writeStatus(<-errc)
	sc.Close()
}

func portForwardOver(sc *spdystream.Connection, port int) {
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
}

// ---------------------------------------------------------------- WebSocket

func dialWS(raw string, protocols []string) *websocket.Conn {
	u := strings.Replace(strings.Replace(raw, "https://", "wss://", 1), "http://", "ws://", 1)
	d := websocket.Dialer{
		Subprotocols:     protocols,
		HandshakeTimeout: 10 * time.Second,
		// The tests' streaming server has a self-signed certificate.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	conn, resp, err := d.Dial(u, nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			fail("websocket dial: %v: %d %s", err, resp.StatusCode, body)
		}
		fail("websocket dial: %v", err)
	}
	if conn.Subprotocol() != protocols[0] {
		fail("negotiated %q, wanted %q", conn.Subprotocol(), protocols[0])
	}
	return conn
}

// execWS is client-go's WebSocket executor (v5): channel-prefixed binary
// messages, stdin closed with the v5 CLOSE message, the status on channel
// 3, then a Close frame that must carry 1000.
func execWS(raw string, withStdin, tty bool) {
	conn := dialWS(raw, []string{"v5.channel.k8s.io", "v4.channel.k8s.io"})
	var wmu sync.Mutex
	send := func(channel byte, data []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return conn.WriteMessage(websocket.BinaryMessage, append([]byte{channel}, data...))
	}
	if tty {
		size, _ := json.Marshal(map[string]int{"Width": 91, "Height": 17})
		if err := send(4, size); err != nil {
			fail("resize: %v", err)
		}
	}
	if withStdin {
		go func() {
			buf := make([]byte, 32*1024)
			for {
				n, err := os.Stdin.Read(buf)
				if n > 0 {
					if send(0, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					send(255, []byte{0})
					return
				}
			}
		}()
	}
	var status []byte
	for {
		kind, msg, err := conn.ReadMessage()
		if err != nil {
			writeStatus(status)
			if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return
			}
			// client-go: "error reading from error stream: next reader: ..."
			fail("next reader: %v", err)
		}
		if kind != websocket.BinaryMessage || len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case 1:
			os.Stdout.Write(msg[1:])
		case 2:
			os.Stderr.Write(msg[1:])
		case 3:
			status = append(status, msg[1:]...)
		}
	}
}

// wsConn is client-go's TunnelingConnection: a net.Conn whose bytes travel
// in WebSocket binary messages.
type wsConn struct {
	ws     *websocket.Conn
	reader io.Reader
	wmu    sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.reader == nil {
			kind, r, err := c.ws.NextReader()
			if err != nil {
				if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
					return 0, io.EOF
				}
				return 0, err
			}
			if kind != websocket.BinaryMessage {
				return 0, fmt.Errorf("tunnel: message of type %d", kind)
			}
			c.reader = r
		}
		n, err := c.reader.Read(p)
		if err == io.EOF {
			c.reader = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error {
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return c.ws.Close()
}

func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.ws.UnderlyingConn().SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

func main() {
	if len(os.Args) < 3 {
		fail("usage: streamclient exec|portforward URL ...")
	}
	args := os.Args[3:]
	switch os.Args[1] {
	case "exec":
		if has(args, "-ws") {
			execWS(os.Args[2], has(args, "-stdin"), has(args, "-tty"))
		} else {
			execSPDY(os.Args[2], has(args, "-stdin"), has(args, "-tty"))
		}
	case "portforward":
		if len(args) < 1 {
			fail("portforward URL PORT")
		}
		port, err := strconv.Atoi(args[0])
		if err != nil {
			fail("port: %v", err)
		}
		var sc *spdystream.Connection
		if has(args, "-tunnel") {
			sc = serveSPDY(&wsConn{ws: dialWS(os.Args[2], []string{"SPDY/3.1+portforward.k8s.io"})})
		} else {
			sc, _ = dialSPDY(os.Args[2], []string{"portforward.k8s.io"})
		}
		portForwardOver(sc, port)
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
