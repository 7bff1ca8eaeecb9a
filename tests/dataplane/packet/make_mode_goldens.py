#!/usr/bin/python3
# Writes the golden packets of tests/dataplane/packet/mode_packets.h: every tunnel mode and
# outer-header option, built with struct.pack and its own checksum, independently of the codec.
# Run: tests/dataplane/packet/make_mode_goldens.py > /tmp/goldens.txt and paste.
import struct
def csum(b):
    if len(b)%2: b+=b'\0'
    s=sum(struct.unpack('!%dH'%(len(b)//2),b))
    while s>>16: s=(s&0xffff)+(s>>16)
    return (~s)&0xffff
def h(s): return bytes.fromhex(s.replace(' ','').replace('\n',''))
def hx(b):
    out=[]
    for i in range(0,len(b),20):
        out.append('"'+' '.join('%02x'%x for x in b[i:i+20])+'"')
    return '\n    '.join(out)
inner4=h("45 00 00 24 1c 46 40 00 40 01 32 5c c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68")
inner6=h("60 00 00 00 00 10 3a 37 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02 80 00 80 75 12 34 00 01 61 62 63 64 65 66 67 68")
L4=bytes([203,0,113,1]); R4=bytes([203,0,113,2])
L6=bytes.fromhex('20010db800ff00000000000000000001'); R6=bytes.fromhex('20010db800ff00000000000000000002')
def ip4(payload, proto, ttl=64, tos=0, df=True, ident=0x0102, src=L4, dst=R4):
    hdr=struct.pack('!BBHHHBBH4s4s',0x45,tos,20+len(payload),ident,0x4000 if df else 0,ttl,proto,0,src,dst)
    c=csum(hdr); hdr=hdr[:10]+struct.pack('!H',c)+hdr[12:]
    return hdr+payload
def flow(ip):
    v=ip[0]>>4
    addrs= ip[12:20] if v==4 else ip[8:40]
    hsh=2166136261
    for b in addrs: hsh=((hsh^b)*16777619)&0xffffffff
    hsh^= ip[9] if v==4 else ip[6]
    hsh=(hsh>>20)^hsh
    return hsh&0xfffff
def ip6(payload, nh, hlim=64, tc=0, fl=0, src=L6, dst=R6, limit=4):
    opt=bytes([nh,0,4,1,limit,1,1,0])
    pl=opt+payload
    return struct.pack('!IHBB',(6<<28)|(tc<<20)|fl,len(pl),60,hlim)+src+dst+pl
def gre(proto, payload, key=None, csumf=False, seq=None):
    flags=0
    if csumf: flags|=0x8000
    if key is not None: flags|=0x2000
    if seq is not None: flags|=0x1000
    hdr=struct.pack('!HH',flags,proto)
    opts=b''
    if csumf: opts+=b'\0\0\0\0'
    if key is not None: opts+=struct.pack('!I',key)
    if seq is not None: opts+=struct.pack('!I',seq)
    g=hdr+opts+payload
    if csumf:
        c=csum(g); g=g[:4]+struct.pack('!H',c)+g[6:]
    return g
eth4=bytes.fromhex('020000000002020000000001')+b'\x08\x00'+inner4
out={}
out['kEthInnerIcmp']=eth4
out['kGretap']=ip4(gre(0x6558,eth4),47)
out['kSit']=ip4(inner6,41,ttl=0x37)
out['kIp6gre']=ip6(gre(0x0800,inner4),47,fl=flow(inner4))
out['kIp6greKeyCsumSeq']=ip6(gre(0x86dd,inner6,key=42,csumf=True,seq=7),47,fl=flow(inner6))
out['kIp6gretap']=ip6(gre(0x6558,eth4),47,fl=flow(inner4))
out['kIp6tnl4']=ip6(inner4,4,fl=flow(inner4))
out['kIp6tnl6']=ip6(inner6,41,fl=flow(inner6))
# tos: fixed 0x28 (DSCP 10) with inner ECT(0) -> 0x2a ; inherit from inner dscp 0xb8|ECT0 -> 0xba
innerEct0=h("45 02 00 24 1c 46 40 00 40 01 32 5a c0 00 02 01 c6 33 64 02 08 00 54 35 12 34 00 01 61 62 63 64 65 66 67 68")
out['kGreTos28Ect0']=ip4(gre(0x0800,innerEct0),47,tos=0x2a)
innerDscp=bytearray(inner4); innerDscp[1]=0xba; innerDscp[10:12]=b'\0\0'; c=csum(bytes(innerDscp[:20])); innerDscp[10:12]=struct.pack('!H',c); innerDscp=bytes(innerDscp)
out['kInnerIcmpDscpEf']=innerDscp
out['kGreTosInherit']=ip4(gre(0x0800,innerDscp),47,tos=0xba)
# ip6gre traffic class inherit from inner
out['kIp6greTclassInherit']=ip6(gre(0x0800,innerDscp),47,tc=0xba,fl=flow(innerDscp))
# nopmtudisc, inner without DF -> outer no DF; inner with DF -> outer DF (copied)
innerNoDf=bytearray(inner4); innerNoDf[6]=0; innerNoDf[10:12]=b'\0\0'; c=csum(bytes(innerNoDf[:20])); innerNoDf[10:12]=struct.pack('!H',c); innerNoDf=bytes(innerNoDf)
out['kInnerIcmpNoDf']=innerNoDf
out['kGreNoPmtudiscNoDf']=ip4(gre(0x0800,innerNoDf),47,df=False)
# keepalive home packet: GRE keyed 42, from 203.0.113.2 to .1, ttl 255, no DF, id 0, gre proto 0
out['kGreKeepaliveHome']=ip4(gre(0,b'',key=42),47,ttl=255,df=False,ident=0,src=R4,dst=L4)
# the keepalive as sent: home packet inside GRE (keyless), ttl 64 fixed, DF
out['kGreKeepaliveSent']=ip4(gre(0x0800,out['kGreKeepaliveHome']),47)
out['kIpipKeepaliveHome']=ip4(b'',4,ttl=255,df=False,ident=0,src=R4,dst=L4)
# ICMP frag needed: from 10.0.0.1 to 192.0.2.1 about inner4 with mtu 1400
icmp=struct.pack('!BBHHH',3,4,0,0,1400)+inner4
c=csum(icmp); icmp=icmp[:2]+struct.pack('!H',c)+icmp[4:]
out['kFragNeeded']=ip4(icmp,1,ttl=64,df=False,ident=0,src=bytes([10,0,0,1]),dst=bytes([192,0,2,1]))
# ICMPv6 PTB from fd00::1 to 2001:db8::1 about inner6 mtu 1280
src6=bytes.fromhex('fd000000000000000000000000000001'); dst6=inner6[8:24]
body=struct.pack('!BBHI',2,0,0,1280)+inner6
pseudo=src6+dst6+struct.pack('!I',len(body))+b'\0\0\0\x3a'
c=csum(pseudo+body); body=body[:2]+struct.pack('!H',c)+body[4:]
out['kPacketTooBig']=struct.pack('!IHBB',6<<28,len(body),58,64)+src6+dst6+body
for k,v in out.items():
    print('inline constexpr char %s[] =\n    %s;' % (k,hx(v)))
