//! Host-side tests of the codec: known answers, round trips under random
//! segmentation, and every way a stream can fail. The interoperability
//! tests against shadowsocks-libev are in `crates/water/tests/ss_libev.rs`.

use proptest::prelude::*;
use water_guest::testing::{Segmentation, handshake, pump};

use super::*;

fn ss(method: &str, secret: &str) -> Ss {
    Ss::from_config(format!("method={method};{secret};target=example.com:443").as_bytes()).unwrap()
}

fn seg(s: (Vec<usize>, Vec<usize>, usize)) -> Segmentation {
    Segmentation { reads: s.0, writes: s.1, buffer: s.2 }
}

/// Runs both handshakes and both directions' codecs; returns what each end
/// decoded (server ← client, client ← server).
fn session(
    client: &Ss,
    server: &Ss,
    up: &[u8],
    down: &[u8],
    hs_seg: &Segmentation,
    codec_seg: &Segmentation,
) -> (Result<Vec<u8>, Errno>, Result<Vec<u8>, Errno>) {
    let mut rng = [7u8; MAX_KEY];
    let c = client.handshake_for(Role::Dialer, rng).unwrap();
    rng[0] = 8;
    let s = server.handshake_for(Role::Listener, rng).unwrap();
    // The server's salt goes out with its first reply: its encoder is made
    // from the server's keys, which exist only once the handshake is done;
    // the client's keys likewise. So: handshake first with the client's
    // data behind it, then the codecs.
    let client_keys = {
        let AnyHandshake::Client(SsHandshake::ClientSend { cipher, .. }) = &c else { unreachable!() };
        let mut cipher = cipher.clone();
        // Past the header chunk: two seals.
        cipher.seal(&mut [0u8; 2]);
        cipher.seal(&mut [0u8; 1]);
        SsKeys::Client(cipher, [7; MAX_KEY])
    };
    let up_wire = pump(client.encoder(Role::Dialer, &client_keys), up, codec_seg).unwrap();
    let (cf, sf) = match handshake(c, s, hs_seg, &up_wire, &[]) {
        Ok(done) => done,
        Err(e) => return (Err(e), Err(e)),
    };
    let got_up = pump(server.decoder(Role::Listener, &sf.keys), &sf.leftover, codec_seg);
    let down_wire = pump(server.encoder(Role::Listener, &sf.keys), down, codec_seg).unwrap();
    let got_down = pump(client.decoder(Role::Dialer, &cf.keys), &down_wire, codec_seg);
    (got_up, got_down)
}

#[test]
fn evp_bytes_to_key_matches_openssl() {
    // Computed independently (Python's hashlib: D1 = md5(p), D2 = md5(D1 + p)).
    let mut key = [0u8; 32];
    key_from_password(b"foobar".iter().copied(), &mut key);
    assert_eq!(hex(&key), "3858f62230ac3c915f300c664312c63f568378529614d22ddb49237d2f60bfdf");
    let mut key = [0u8; 16];
    key_from_password(b"foobar".iter().copied(), &mut key);
    assert_eq!(hex(&key), "3858f62230ac3c915f300c664312c63f");
    // The config's escapes are undone before hashing.
    let s = Ss::from_config(br"method=aes-256-gcm;password=a\;b\=c\\d").unwrap();
    assert_eq!(hex(s.master_key()), "b28014dd2343a94900fb2f5942f1ea283397e5d85ab35ae81910d964323b2067");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Streams shadowsocks-libev 3.3.5 produced (Debian's `ss-tunnel` → `ss-server`,
/// password "kat password", the application sending "hello, shadowsocks" to
/// an echo service on 127.0.0.1:PORT), captured on the wire in both
/// directions: (method, port, client → server, server → client).
const LIBEV_STREAMS: [(&str, u16, &str, &str); 4] = [
    (
        "chacha20-ietf-poly1305",
        45157,
        "83ae9ccd7d02981d79c3b6fdecd205075a3691559897a214798a639bfe791744377e0a94cae45c87c814a72c\
         4872a431cce0e2a4286577fc032c03c999844f4632a873d808b759630de271962dc9cd441ae9e9996d31ce61\
         a5c0fc4869f25c2dd227beb0e9c9883b4b051c016b90a21a662876d393c01361a01b67841c",
        "8c5f9bc3bad111ae5a2439d01f174e42fc699c95ccdd7b03e4abd2d518fc555556b26cb0344429bedcb4f207\
         0b35ae58c75d1aacf27276dbb1ca142d5c158bb21920d69ff2037ffabad8e08a20286e7b0956e280",
    ),
    (
        "aes-256-gcm",
        38093,
        "97cdee553a4daa4988bd258bbdb6be8a3119d222763d4930f9f02ffe49488d6c7ba08d875191a0d0aa1f34f0\
         c43fbef7d3b4026649e1e1e76aad47754196d935ce614b719022adae79cf051a88ff378566e9d720c55e7f38\
         20b38829a4bdfa2b0767edc6cfe281cd06e0dbc560f7deb99077d105a53318a1f1f0f042af",
        "85f19ac8a314ec9ac6c48564ac9fd70a954f922aed1b0f42456ee719f6bad47bfa66a89ad34577d6bb12aaac\
         77d3a87281fa000f5c0de4e9cfa2cee761e45e69c9d88c94c9f472dda717e0e3cb6bb731cf9814a1",
    ),
    (
        "aes-128-gcm",
        39643,
        "93e7f4877dc22ff70507c0fa1209224124a9b5167b6092ebd757b6397b92f88566c907996dc7ccc63d9049af\
         b17e643ec1c8e3830e18d2368bfc23fac805e52dd01a95e27a91993d2b6760d3f033592078eae03f8a07d498\
         27562c34d37e453b1f01dc927bb553164e694c498f",
        "9dbdaf38f99ab5b0c7e10ceee5075117d23b36d9668be4cb0b7c979cf1d0ab5ed7c8db5b823c649374c49a5b\
         50d98d05ead5024a624b2d18f183ce9e21eb59cb9626a598",
    ),
    (
        "xchacha20-ietf-poly1305",
        46955,
        "5cc4dcb36df7181dfd5ad6baa739bfbb0cc86e7fc730e25bd279ac9271d27e7d96599583f8994cd48356a605\
         ef6ec9c75d15128736e521fef01c52bec3c737c2106152a328d3195556a5dc7a6444b9cd2bb1a9e32a7c0203\
         ad26942e65ba324bcea666b176329fd257c1132f876d9c80616bd8ca12163e47eb914a550c",
        "14d7bdd295065b8037eca4a15b71ba9348bb67b0585401885ed7e9d415a9dd210a7764f73ad3206eaae3e5c5\
         86e7e1b90f8ee799a8efbc744fad1f98e9b3b52fd135895db1a9c69c3fcffc51570fcaa4e5d2b414",
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn streams_from_libev_decode_both_ways() {
    for (method, port, up, down) in LIBEV_STREAMS {
        let s = Ss::from_config(format!("method={method};password=kat password").as_bytes()).unwrap();
        // Client → server, through our server end's handshake and decoder.
        let mut up = unhex(up);
        let mut hs = s.handshake_for(Role::Listener, [9; MAX_KEY]).unwrap();
        let step = hs.step(&mut up, &mut [0u8; 1024]).unwrap();
        assert!(step.done && step.produced == 0, "{method}: {step:?}");
        let keys = hs.keys();
        let got = pump(s.decoder(Role::Listener, &keys), &up[step.consumed..], &Segmentation::default());
        assert_eq!(got.unwrap(), b"hello, shadowsocks", "{method}");
        // The address header libev sent names the echo service.
        let key_len = s.method().key_len();
        let up = unhex(LIBEV_STREAMS.iter().find(|v| v.0 == method).unwrap().2);
        let mut cipher = Cipher::new(s.method(), s.master_key(), &up[..key_len]);
        let len = cipher.open_len(&up[key_len..key_len + LEN_BLOCK]).unwrap();
        let mut first = up[key_len + LEN_BLOCK..key_len + LEN_BLOCK + len].to_vec();
        cipher.open(&mut first, &up[key_len + LEN_BLOCK + len..][..TAG]).unwrap();
        assert_eq!(
            first[..7],
            Target::parse(format!("127.0.0.1:{port}").as_bytes()).unwrap().header()[..],
            "{method}"
        );
        // Server → client, through our client end's decoder.
        let client = SsKeys::Client(Cipher::new(s.method(), s.master_key(), &[0; 32][..key_len]), [0xee; 32]);
        let got = pump(s.decoder(Role::Dialer, &client), &unhex(down), &Segmentation::default());
        assert_eq!(got.unwrap(), b"hello, shadowsocks", "{method}");
    }
}

#[test]
fn config_errors_name_the_key() {
    let msg = |c: &str| Ss::from_config(c.as_bytes()).unwrap_err().message().to_string();
    assert_eq!(msg("password=x"), "missing config key `method`");
    assert!(msg("method=rc4-md5;password=x").starts_with("config key `method`: unsupported"));
    assert_eq!(msg("method=aes-256-gcm"), "missing config key `password`");
    assert_eq!(msg("method=aes-256-gcm;password="), "config key `password`: empty");
    assert_eq!(msg("method=aes-256-gcm;passwd=x"), "unknown config key `passwd`");
    assert_eq!(msg("method=aes-128-gcm;key=AAAA"), "config key `key`: wrong length for this method");
    assert_eq!(msg("method=aes-128-gcm;key=!!"), "config key `key`: not base64");
    assert_eq!(
        msg("method=aes-128-gcm;password=x;target=nope"),
        "config key `target`: must be host:port (IPv6 in brackets)"
    );
    assert_eq!(msg("method=aes-128-gcm;password=x;target=a:99999"), "config key `target`: bad port");
    // A 16-byte key, base64 in either alphabet, padded or not.
    for key in ["AAECAwQFBgcICQoLDA0ODw==", "AAECAwQFBgcICQoLDA0ODw"] {
        let s = Ss::from_config(format!("method=aes-128-gcm;key={key}").as_bytes()).unwrap();
        assert_eq!(s.master_key(), (0..16).collect::<Vec<u8>>());
    }
    let s = Ss::from_config(b"method=aes-128-gcm;key=-_-_-_-_-_-_-_-_-_-_-w").unwrap();
    assert_eq!(s.master_key()[0], 0xfb);
    // Valid for a server end; a client end needs `target`.
    assert!(s.handshake_for(Role::Listener, [0; MAX_KEY]).is_ok());
    assert_eq!(s.handshake_for(Role::Dialer, [0; MAX_KEY]).err(), Some(Errno::INVAL));
    assert_eq!(s.handshake_for(Role::Relay, [0; MAX_KEY]).err(), Some(Errno::INVAL));
}

#[test]
fn targets_become_socks5_address_headers() {
    let t = |s: &str| Target::parse(s.as_bytes()).map(|t| t.header().to_vec());
    assert_eq!(t("127.0.0.1:80"), Ok(vec![1, 127, 0, 0, 1, 0, 80]));
    assert_eq!(t("[::1]:443"), Ok([&[4u8][..], &[0; 15], &[1, 1, 187]].concat()));
    assert_eq!(t("example.com:8388"), Ok([&[3u8, 11][..], b"example.com", &[0x20, 0xc4]].concat()));
    assert!(t("::1:80").is_err());
    assert!(t(&format!("{}:1", "a".repeat(256))).is_err());
    assert_eq!(header_len(&t("[::1]:443").unwrap()), Some(19));
    assert_eq!(header_len(&[3, 5, b'a']), None);
    assert_eq!(header_len(&[9, 0, 0]), None);
}

#[test]
fn the_wire_is_salt_then_chunks_and_never_an_empty_chunk() {
    let s = ss("chacha20-ietf-poly1305", "password=pw");
    let mut hs = s.handshake_for(Role::Dialer, [1; MAX_KEY]).unwrap();
    let mut out = [0u8; 1024];
    let step = hs.step(&mut [], &mut out).unwrap();
    assert!(step.done);
    // salt, length block, header (1 + 1 + 11 + 2) and its tag.
    assert_eq!(step.produced, 32 + 18 + 15 + 16);
    assert_eq!(out[..32], [1; 32]);
    let keys = hs.keys();
    let mut enc = s.encoder(Role::Dialer, &keys);
    let mut big = vec![0u8; 40_000];
    assert_eq!(enc.transform(&[], &mut big).unwrap(), Progress::default());
    let p = enc.transform(&[5; MAX_PAYLOAD + 1], &mut big).unwrap();
    assert_eq!(p, Progress { consumed: MAX_PAYLOAD + 1, produced: 2 * 34 + MAX_PAYLOAD + 1 });
}

#[test]
fn a_wrong_password_leaves_the_server_silent_and_reading() {
    let client = ss("aes-256-gcm", "password=right");
    let server = ss("aes-256-gcm", "password=wrong");
    let mut c = client.handshake_for(Role::Dialer, [1; MAX_KEY]).unwrap();
    let mut wire = vec![0u8; 1024];
    let n = c.step(&mut [], &mut wire).unwrap().produced;
    wire.truncate(n);
    wire.extend_from_slice(&[9; 5000]);
    let mut s = server.handshake_for(Role::Listener, [2; MAX_KEY]).unwrap();
    let mut out = vec![0u8; 1024];
    // Byte by byte, then all at once: nothing is ever produced, everything
    // is eventually consumed, and it is never done.
    let mut pos = 0;
    for end in 1..=wire.len() {
        let step = s.step(&mut wire[pos..end].to_vec(), &mut out).unwrap();
        assert_eq!((step.produced, step.done), (0, false));
        pos += step.consumed;
    }
    assert_eq!(pos, wire.len());
    assert_eq!(s.peer_closed(), AUTH_FAILED);
    // Garbage from the first byte: the same.
    let mut s = server.handshake_for(Role::Listener, [2; MAX_KEY]).unwrap();
    let step = s.step(&mut [0u8; 100], &mut out).unwrap();
    assert_eq!(step, Step { consumed: 100, produced: 0, done: false });
}

#[test]
fn a_client_end_refuses_its_own_stream_reflected_back() {
    let s = ss("chacha20-ietf-poly1305", "password=pw");
    let mut hs = s.handshake_for(Role::Dialer, [5; MAX_KEY]).unwrap();
    let mut wire = vec![0u8; 1024];
    let n = hs.step(&mut [], &mut wire).unwrap().produced;
    wire.truncate(n);
    let keys = hs.keys();
    wire.extend(pump(s.encoder(Role::Dialer, &keys), b"GET / HTTP/1.1", &Segmentation::default()).unwrap());
    // An echo in the server's place: salt, header chunk and data all come
    // back, and every tag would check out.
    assert_eq!(pump(s.decoder(Role::Dialer, &keys), &wire, &Segmentation::default()), Err(AUTH_FAILED));
}

#[test]
fn a_zero_length_chunk_is_an_authentication_failure() {
    let s = ss("chacha20-ietf-poly1305", "password=pw");
    let salt = [3u8; 32];
    let mut cipher = Cipher::new(Method::ChaCha20, s.master_key(), &salt);
    let mut wire = salt.to_vec();
    let mut len = [0u8; 2];
    let tag = cipher.seal(&mut len);
    wire.extend_from_slice(&len);
    wire.extend_from_slice(&tag);
    let keys = SsKeys::Client(Cipher::new(Method::ChaCha20, s.master_key(), &[0; 32]), [0xee; 32]);
    assert_eq!(pump(s.decoder(Role::Dialer, &keys), &wire, &Segmentation::default()), Err(AUTH_FAILED));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_however_split(
        method in 0usize..4,
        up in proptest::collection::vec(any::<u8>(), 0..40_000),
        down in proptest::collection::vec(any::<u8>(), 0..40_000),
        hs in (proptest::collection::vec(1usize..200, 1..8), proptest::collection::vec(1usize..200, 1..8), 0usize..1),
        codec in (proptest::collection::vec(1usize..20_000, 1..8), proptest::collection::vec(1usize..20_000, 1..8), 0usize..40_000),
    ) {
        let name = Method::ALL[method].1;
        let (client, server) = (ss(name, "password=pw"), ss(name, "password=pw"));
        let (got_up, got_down) = session(&client, &server, &up, &down, &seg(hs), &seg(codec));
        prop_assert_eq!(got_up.unwrap(), up);
        prop_assert_eq!(got_down.unwrap(), down);
    }

    #[test]
    fn altered_or_truncated_streams_deliver_nothing_corrupt(
        method in 0usize..4,
        data in proptest::collection::vec(any::<u8>(), 1..40_000),
        flip in any::<proptest::sample::Index>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let name = Method::ALL[method].1;
        let s = ss(name, "password=pw");
        let keys = SsKeys::Server { client: Cipher::new(s.method(), s.master_key(), &[1; 32]), salt: [4; MAX_KEY], plain: 0 };
        let wire = pump(s.encoder(Role::Listener, &keys), &data, &Segmentation::default()).unwrap();
        let client_keys = SsKeys::Client(Cipher::new(s.method(), s.master_key(), &[0; 32]), [0xee; 32]);
        // A flipped bit anywhere: the client end fails, having delivered
        // only a prefix of the true data (the chunks before the flip).
        let mut bad = wire.clone();
        bad[flip.index(wire.len())] ^= 0x10;
        let mut dec = s.decoder(Role::Dialer, &client_keys);
        let mut out = vec![0u8; 40_000];
        let p = dec.transform(&bad, &mut out);
        match p {
            Ok(p) => prop_assert!(false, "accepted a flipped bit: {:?}", p),
            Err(e) => prop_assert_eq!(e, AUTH_FAILED),
        }
        let got = pump(s.decoder(Role::Dialer, &client_keys), &bad, &Segmentation { reads: vec![1000], writes: vec![7], buffer: 5000 });
        prop_assert!(got.is_err());
        // Cut short anywhere but a chunk boundary: an error, never a short
        // stream passed off as whole.
        let at = cut.index(wire.len());
        let got = pump(s.decoder(Role::Dialer, &client_keys), &wire[..at], &Segmentation::default());
        match got {
            Ok(prefix) => prop_assert!(data.starts_with(&prefix) && (at == 0 || prefix.len() % MAX_PAYLOAD == 0)),
            Err(e) => prop_assert_eq!(e, Errno::PROTO),
        }
    }

    #[test]
    fn a_server_end_discards_after_a_failure(data in proptest::collection::vec(any::<u8>(), 1..40_000), flip in any::<proptest::sample::Index>()) {
        let s = ss("chacha20-ietf-poly1305", "password=pw");
        let salt = [1u8; 32];
        let enc_keys = SsKeys::Client(Cipher::new(s.method(), s.master_key(), &salt), [0xee; 32]);
        let mut wire = pump(s.encoder(Role::Dialer, &enc_keys), &data, &Segmentation::default()).unwrap();
        let i = flip.index(wire.len());
        wire[i] ^= 1;
        let keys = SsKeys::Server { client: Cipher::new(s.method(), s.master_key(), &salt), salt: [4; MAX_KEY], plain: 0 };
        // The server end consumes everything, returns no error while the
        // client keeps sending, and delivers only whole true chunks.
        let mut dec = s.decoder(Role::Listener, &keys);
        let mut out = vec![0u8; 40_000];
        let p = dec.transform(&wire, &mut out).unwrap();
        prop_assert_eq!(p.consumed, wire.len());
        prop_assert!(data.starts_with(&out[..p.produced]) && p.produced % MAX_PAYLOAD == 0);
        prop_assert_eq!(dec.finish(&mut out), Err(AUTH_FAILED));
    }
}

/// Issue 16: no `Debug` of a key-holding type shows the master key.
#[test]
fn debug_output_never_shows_the_master_key() {
    for method in ["chacha20-ietf-poly1305", "aes-128-gcm"] {
        let t = ss(method, "password=hunter2");
        let key = t.master_key();
        // The derived Debug of a key array starts with its first bytes.
        let first: Vec<String> = key[..6].iter().map(u8::to_string).collect();
        let shown = first.join(", ");
        let server = t.handshake_for(Role::Listener, [9u8; MAX_KEY]).unwrap();
        let client_keys =
            SsKeys::Client(Cipher::new(t.method(), key, &[1u8; 32][..t.method().key_len()]), [1u8; MAX_KEY]);
        let decoder = Transport::decoder(&t, Role::Dialer, &client_keys);
        for text in
            [format!("{t:?}"), format!("{server:?}"), format!("{decoder:?}"), format!("{client_keys:?}")]
        {
            assert!(!text.contains(&shown), "{method}: the key's bytes in {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
