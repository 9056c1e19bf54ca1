//! Reading capture files (pcap and pcapng, through `pcap-file`) and slicing their frames down to
//! the TCP header (through `etherparse`), for the link types tcpdump and Wireshark write on Linux.

use std::{fs::File, io::Read, net::SocketAddr, path::Path, time::Duration};

use etherparse::{EtherType, LaxSlicedPacket, LinuxSllHeaderSlice, LinuxSllProtocolType, TransportSlice};
use pcap_file::{
    DataLink, PcapError, TsResolution,
    pcap::PcapParser,
    pcapng::{
        Block, PcapNgParser,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};

/// Why a capture file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is neither a pcap nor a pcapng file: {source}")]
    Format { path: String, source: PcapError },
}

/// Why one frame yields no TCP segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported link type {0:?}")]
    UnsupportedLinkType(DataLink),
    #[error("link header: {0}")]
    Link(String),
    #[error("network header: {0}")]
    Network(String),
    #[error("TCP header: {0}")]
    Tcp(String),
    /// Not a TCP/IP packet (ARP, ICMP, UDP, ...): nothing to decode, not an error in the capture.
    #[error("not TCP over IP")]
    NotTcp,
}

/// One captured frame and the link type of the interface it was captured on.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 1-based, as Wireshark numbers frames.
    pub number: u64,
    pub link_type: DataLink,
    /// When it was captured (since the epoch); a pcapng simple packet block has no time.
    pub time: Option<Duration>,
    pub data: Vec<u8>,
}

/// The TCP header of a frame, as far as the decoder needs it.
#[derive(Debug, Clone)]
pub struct TcpSegment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    /// Payload bytes sent, as the IP header's length says (what the programs count), or as
    /// captured when the header leaves it open (a segmentation-offload packet's length 0).
    pub payload_len: usize,
    /// The payload bytes captured: fewer than `payload_len` when the snap length cut the frame.
    pub payload: &'a [u8],
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number (meaningful when `ack` is set).
    pub ack_number: u32,
    /// The TCP option area.
    pub options: &'a [u8],
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Bytes asked of the source at a time; a record larger than what is buffered doubles it.
const READ_CHUNK: usize = 64 * 1024;

/// More unparsed bytes than any record can hold (pcap-file caps a packet at 256 KiB, pcapng
/// blocks are bounded the same way in practice): a parser still asking for more is reading
/// garbage, so the file is cut there rather than read whole into memory.
const MAX_RECORD: usize = 64 * 1024 * 1024;

enum Format {
    Pcap { parser: PcapParser, link_type: DataLink, nanosecond: bool },
    PcapNg(PcapNgParser),
}

/// The frames of a pcap or pcapng file, read one at a time: memory holds one record (and the
/// read-ahead), whatever the file's size. A file cut short ends the frames and sets
/// [`CaptureReader::read_error`].
pub struct CaptureReader<R> {
    source: R,
    format: Format,
    buffer: Vec<u8>,
    /// The first byte of `buffer` not parsed yet.
    start: usize,
    end_of_source: bool,
    frames_read: u64,
    read_error: Option<String>,
}

/// Opens a pcap or pcapng file and reads its header.
pub fn open(path: &Path) -> Result<CaptureReader<File>, CaptureFileError> {
    let file = File::open(path)
        .map_err(|source| CaptureFileError::Io { path: path.display().to_string(), source })?;
    start(path, file)
}

/// Reads the header of the pcap or pcapng file `source` reads from; `path` names it in errors.
pub fn start<R: Read>(path: &Path, source: R) -> Result<CaptureReader<R>, CaptureFileError> {
    let display = path.display().to_string();
    CaptureReader::new(source).map_err(|source| match source {
        PcapError::IoError(source) if source.kind() != std::io::ErrorKind::UnexpectedEof => {
            CaptureFileError::Io { path: display, source }
        }
        source => CaptureFileError::Format { path: display, source },
    })
}

/// The frames of a pcap or pcapng file held in memory (what the fuzz targets feed).
pub fn parse(bytes: &[u8]) -> Result<CaptureReader<&[u8]>, PcapError> {
    CaptureReader::new(bytes)
}

/// Drops the parsed bytes before `start` and appends what `source` gives next; true at its end.
fn fill(source: &mut impl Read, buffer: &mut Vec<u8>, start: usize) -> std::io::Result<bool> {
    buffer.drain(..start);
    let unparsed = buffer.len();
    buffer.resize(unparsed + unparsed.max(READ_CHUNK), 0);
    let read = loop {
        match source.read(&mut buffer[unparsed..]) {
            Ok(read) => break Ok(read),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    buffer.truncate(unparsed + read.as_ref().map_or(0, |&read| read));
    Ok(read? == 0)
}

/// A record cut short is the end of the file, as `pcap-file`'s readers report it.
fn cut_short(error: PcapError) -> PcapError {
    match error {
        PcapError::IncompleteBuffer => PcapError::IoError(std::io::ErrorKind::UnexpectedEof.into()),
        other => other,
    }
}

/// What one record of the file is: a frame, something else (a pcapng block that carries no
/// packet), or a packet that cannot be placed.
enum Record {
    Frame(DataLink, Option<Duration>, Vec<u8>),
    Other,
    Broken(String),
}

// The slice parsers over a buffer of our own, not `pcap-file`'s readers: a reader allocates and
// zeroes an 8 MB buffer for every file (most of the time a fuzz execution took), and its pcap
// reader rejects every packet whose original length exceeds the snap length, which is exactly
// what a capture with `tcpdump -s N` holds (hence raw packets).
impl<R: Read> CaptureReader<R> {
    /// Reads the file header from `source`.
    pub fn new(mut source: R) -> Result<Self, PcapError> {
        let mut buffer = Vec::new();
        let mut end_of_source = false;
        loop {
            let bytes = &buffer[..];
            let header = if bytes.is_empty() {
                Err(PcapError::IncompleteBuffer)
            } else if bytes.starts_with(&PCAPNG_MAGIC) {
                PcapNgParser::new(bytes)
                    .map(|(rest, parser)| (bytes.len() - rest.len(), Format::PcapNg(parser)))
            } else {
                PcapParser::new(bytes).map(|(rest, parser)| {
                    let header = parser.header();
                    let nanosecond = header.ts_resolution == TsResolution::NanoSecond;
                    (
                        bytes.len() - rest.len(),
                        Format::Pcap { parser, link_type: header.datalink, nanosecond },
                    )
                })
            };
            match header {
                Ok((start, format)) => {
                    return Ok(Self {
                        source,
                        format,
                        buffer,
                        start,
                        end_of_source,
                        frames_read: 0,
                        read_error: None,
                    });
                }
                Err(PcapError::IncompleteBuffer) if !end_of_source && buffer.len() < MAX_RECORD => {
                    end_of_source = fill(&mut source, &mut buffer, 0).map_err(PcapError::IoError)?;
                }
                Err(error) => return Err(cut_short(error)),
            }
        }
    }

    /// Frames given so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// Why reading stopped before the end of the file, once the frames are exhausted.
    pub fn read_error(&self) -> Option<&str> {
        self.read_error.as_deref()
    }

    /// Parses the next record of the unparsed bytes: how many bytes it took, and what it is.
    fn next_record(&mut self) -> Result<(usize, Record), PcapError> {
        let bytes = &self.buffer[self.start..];
        if bytes.is_empty() {
            return Err(PcapError::IncompleteBuffer);
        }
        let (rest, record) = match &mut self.format {
            Format::Pcap { parser, link_type, nanosecond } => {
                let (rest, packet) = parser.next_raw_packet(bytes)?;
                let frac_nanos =
                    if *nanosecond { packet.ts_frac } else { packet.ts_frac.saturating_mul(1000) };
                let time =
                    Duration::from_secs(packet.ts_sec.into()) + Duration::from_nanos(frac_nanos.into());
                (rest, Record::Frame(*link_type, Some(time), packet.data.into_owned()))
            }
            Format::PcapNg(parser) => {
                let (rest, block) = parser.next_block(bytes)?;
                let record = match block {
                    Block::EnhancedPacket(packet) => match parser.packet_interface(&packet) {
                        Some(interface) => {
                            // pcap-file gives the raw timestamp as nanoseconds.
                            let time = interface_time(interface, packet.timestamp.as_nanos());
                            Record::Frame(interface.linktype, time, packet.data.into_owned())
                        }
                        None => {
                            Record::Broken(format!("packet on undeclared interface {}", packet.interface_id))
                        }
                    },
                    // A simple packet block belongs to the first interface.
                    Block::SimplePacket(packet) => match parser.interfaces().first() {
                        Some(interface) => Record::Frame(interface.linktype, None, packet.data.into_owned()),
                        None => Record::Broken("simple packet block before any interface".to_owned()),
                    },
                    Block::Packet(packet) => {
                        match parser.interfaces().get(usize::from(packet.interface_id)) {
                            Some(interface) => {
                                let time = interface_time(interface, packet.timestamp.into());
                                Record::Frame(interface.linktype, time, packet.data.into_owned())
                            }
                            None => Record::Broken(format!(
                                "packet on undeclared interface {}",
                                packet.interface_id
                            )),
                        }
                    }
                    _ => Record::Other,
                };
                (rest, record)
            }
        };
        Ok((bytes.len() - rest.len(), record))
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        while self.read_error.is_none() {
            match self.next_record() {
                Ok((used, record)) => {
                    self.start += used;
                    match record {
                        Record::Frame(link_type, time, data) => {
                            self.frames_read += 1;
                            return Some(Frame { number: self.frames_read, link_type, time, data });
                        }
                        Record::Other => {}
                        Record::Broken(error) => self.read_error = Some(error),
                    }
                }
                Err(PcapError::IncompleteBuffer)
                    if !self.end_of_source && self.buffer.len() - self.start < MAX_RECORD =>
                {
                    let filled = fill(&mut self.source, &mut self.buffer, self.start);
                    self.start = 0;
                    match filled {
                        Ok(end_of_source) => self.end_of_source = end_of_source,
                        Err(error) => self.read_error = Some(error.to_string()),
                    }
                }
                // The whole file parsed.
                Err(PcapError::IncompleteBuffer) if self.start == self.buffer.len() => return None,
                Err(error) => self.read_error = Some(cut_short(error).to_string()),
            }
        }
        None
    }
}

/// A pcapng timestamp in its interface's units (`if_tsresol`: 10^-n seconds, or 2^-n with the
/// top bit set; microseconds when absent); `None` when the resolution is out of range.
fn interface_time(interface: &InterfaceDescriptionBlock<'_>, raw: u128) -> Option<Duration> {
    let resolution = interface
        .options
        .iter()
        .find_map(|option| match option {
            InterfaceDescriptionOption::IfTsResol(resolution) => Some(*resolution),
            _ => None,
        })
        .unwrap_or(6);
    let per_second: u128 = if resolution & 0x80 == 0 {
        10u128.checked_pow(u32::from(resolution))?
    } else {
        1u128.checked_shl(u32::from(resolution & 0x7f))?
    };
    let secs = u64::try_from(raw / per_second).ok()?;
    let nanos = u32::try_from((raw % per_second).checked_mul(1_000_000_000)? / per_second).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Linux cooked capture v2 (LINKTYPE_LINUX_SLL2): protocol type (2 bytes), reserved (2),
/// interface index (4), ARPHRD type (2), packet type (1), address length (1), address (8).
const SLL2_HEADER_LEN: usize = 20;

impl Frame {
    /// The network protocol and packet of a frame that is not Ethernet.
    fn network(&self) -> Result<(EtherType, &[u8]), FrameError> {
        let data = self.data.as_slice();
        match self.link_type {
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => match data.first().map(|b| b >> 4) {
                Some(4) => Ok((EtherType::IPV4, data)),
                Some(6) => Ok((EtherType::IPV6, data)),
                _ => Err(FrameError::Network("not an IP packet".to_owned())),
            },
            DataLink::LINUX_SLL => {
                let header =
                    LinuxSllHeaderSlice::from_slice(data).map_err(|e| FrameError::Link(e.to_string()))?;
                let LinuxSllProtocolType::EtherType(ether_type) = header.protocol_type() else {
                    return Err(FrameError::NotTcp);
                };
                Ok((ether_type, data.get(header.slice().len()..).unwrap_or_default()))
            }
            DataLink::LINUX_SLL2 => {
                let (Some(protocol), Some(rest)) = (data.get(..2), data.get(SLL2_HEADER_LEN..)) else {
                    return Err(FrameError::Link(format!(
                        "{} bytes cannot hold a Linux cooked v2 header",
                        data.len()
                    )));
                };
                Ok((EtherType(u16::from_be_bytes([protocol[0], protocol[1]])), rest))
            }
            other => Err(FrameError::UnsupportedLinkType(other)),
        }
    }

    /// The frame as an Ethernet frame, what an XDP program receives: other link types get a
    /// synthetic Ethernet header (zero addresses) carrying the network protocol.
    pub fn to_ethernet(&self) -> Result<std::borrow::Cow<'_, [u8]>, FrameError> {
        if self.link_type == DataLink::ETHERNET {
            return Ok(std::borrow::Cow::Borrowed(&self.data));
        }
        let (ether_type, network) = self.network()?;
        let mut frame = Vec::with_capacity(14 + network.len());
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&ether_type.0.to_be_bytes());
        frame.extend_from_slice(network);
        Ok(std::borrow::Cow::Owned(frame))
    }

    /// Slices the frame down to its TCP header. Truncated payloads are fine (snap length); a
    /// truncated TCP header is an error.
    pub fn tcp(&self) -> Result<TcpSegment<'_>, FrameError> {
        let sliced = if self.link_type == DataLink::ETHERNET {
            LaxSlicedPacket::from_ethernet(&self.data).map_err(|e| FrameError::Link(e.to_string()))?
        } else {
            let (ether_type, network) = self.network()?;
            LaxSlicedPacket::from_ether_type(ether_type, network)
        };
        let Some(net) = sliced.net.as_ref().and_then(|net| net.ip_payload_ref().map(|_| net)) else {
            return match sliced.stop_err {
                Some((error, _)) => Err(FrameError::Network(error.to_string())),
                None => Err(FrameError::NotTcp),
            };
        };
        // The transport length the IP header declares, also when the frame was cut short; 0 is
        // what segmentation offload leaves in a packet it has not split yet.
        let (src_ip, dst_ip, declared) = match net {
            etherparse::LaxNetSlice::Ipv4(v4) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
                Some(usize::from(v4.header().total_len()))
                    .filter(|&total| total != 0)
                    .map(|total| total.saturating_sub(v4.header().slice().len())),
            ),
            etherparse::LaxNetSlice::Ipv6(v6) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
                Some(usize::from(v6.header().payload_length()))
                    .filter(|&len| len != 0)
                    .map(|len| len.saturating_sub(v6.extensions().slice().len())),
            ),
            etherparse::LaxNetSlice::Arp(_) => return Err(FrameError::NotTcp),
        };
        match sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => Ok(TcpSegment {
                src: SocketAddr::new(src_ip, tcp.source_port()),
                dst: SocketAddr::new(dst_ip, tcp.destination_port()),
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                payload_len: declared
                    .map_or(tcp.payload().len(), |l4| l4.saturating_sub(tcp.header_len()))
                    .max(tcp.payload().len()),
                payload: tcp.payload(),
                seq: tcp.sequence_number(),
                ack_number: tcp.acknowledgment_number(),
                // The fixed header is 20 bytes; etherparse checked the data offset covers it.
                options: tcp.header_slice().get(20..).unwrap_or_default(),
            }),
            Some(_) => Err(FrameError::NotTcp),
            None => match sliced.stop_err {
                Some((error, _)) => Err(FrameError::Tcp(error.to_string())),
                None => Err(FrameError::NotTcp),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    /// A TCP SYN from 192.0.2.1:40000 to 192.0.2.2:80 carrying one MP_CAPABLE option.
    fn ipv4_syn() -> Vec<u8> {
        let builder = PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .options_raw(&[30, 4, 0x01, 0x01])
            .expect("a 4-byte option area is valid");
        let mut packet = Vec::new();
        builder.write(&mut packet, &[]).expect("writing to a Vec");
        packet
    }

    fn frame(link_type: DataLink, data: Vec<u8>) -> Frame {
        Frame { number: 1, link_type, time: None, data }
    }

    #[test]
    fn every_supported_link_type_reaches_the_tcp_options() {
        let ip = ipv4_syn();
        let mut ethernet = vec![0u8; 12];
        ethernet.extend_from_slice(&[0x08, 0x00]);
        ethernet.extend_from_slice(&ip);
        let mut sll = vec![0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        sll2.extend_from_slice(&ip);
        for (link_type, data) in [
            (DataLink::ETHERNET, ethernet),
            (DataLink::RAW, ip.clone()),
            (DataLink::IPV4, ip),
            (DataLink::LINUX_SLL, sll),
            (DataLink::LINUX_SLL2, sll2),
        ] {
            let frame = frame(link_type, data);
            let tcp = frame.tcp().unwrap_or_else(|e| panic!("{link_type:?}: {e}"));
            assert_eq!(tcp.src, "192.0.2.1:40000".parse().unwrap());
            assert_eq!(tcp.dst, "192.0.2.2:80".parse().unwrap());
            assert!(tcp.syn && !tcp.ack);
            assert_eq!(tcp.options, [30, 4, 0x01, 0x01]);
        }
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let ip = ipv4_syn();
        // TCP header cut in the middle of its options.
        assert!(matches!(frame(DataLink::RAW, ip[..38].to_vec()).tcp(), Err(FrameError::Tcp(_))));
        assert!(matches!(frame(DataLink::RAW, vec![0x45, 0]).tcp(), Err(FrameError::Network(_))));
        assert!(matches!(frame(DataLink::LINUX_SLL2, vec![8, 0, 0]).tcp(), Err(FrameError::Link(_))));
        assert!(matches!(frame(DataLink::ETHERNET, vec![0; 5]).tcp(), Err(FrameError::Link(_))));
        assert_eq!(
            frame(DataLink::IEEE802_11, ip).tcp().unwrap_err(),
            FrameError::UnsupportedLinkType(DataLink::IEEE802_11)
        );
        // ARP over Ethernet is simply not TCP.
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        assert_eq!(frame(DataLink::ETHERNET, arp).tcp().unwrap_err(), FrameError::NotTcp);
    }

    /// pcap times in micro- or nanoseconds; pcapng ones in the interface's units (`pcap-file`
    /// hands the raw count over as nanoseconds), microseconds by default.
    #[test]
    fn frames_carry_their_capture_time() {
        use pcap_file::{
            pcap::{PcapHeader, PcapPacket, PcapWriter},
            pcapng::{PcapNgWriter, blocks::enhanced_packet::EnhancedPacketBlock},
        };
        let ip = ipv4_syn();
        let time = Duration::new(1_700_000_000, 250_000_000);
        for ts_resolution in [TsResolution::MicroSecond, TsResolution::NanoSecond] {
            let header = PcapHeader { datalink: DataLink::RAW, ts_resolution, ..PcapHeader::default() };
            let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
            writer.write_packet(&PcapPacket::new(time, ip.len() as u32, &ip)).unwrap();
            let bytes = writer.into_writer();
            let frames: Vec<Frame> = parse(&bytes).unwrap().collect();
            assert_eq!(frames[0].time, Some(time), "{ts_resolution:?}");
        }
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::RAW,
                snaplen: 0,
                options: vec![],
            })
            .unwrap();
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(1_500_000),
                original_len: ip.len() as u32,
                data: std::borrow::Cow::Borrowed(&ip),
                options: vec![],
            })
            .unwrap();
        let bytes = writer.into_inner();
        let frames: Vec<Frame> = parse(&bytes).unwrap().collect();
        assert_eq!(frames[0].time, Some(Duration::from_millis(1500)));
    }
}
