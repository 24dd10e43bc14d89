// A test driver for the official edXML library (EdXML102-0.0.3.jar): it builds
// packages with the library's builders and parses packages with its parsers,
// JSON in and JSON out, so the Python tests can compare field for field.
//
//   java Edxml102Driver REQUESTS.json RESPONSES.json
//
// REQUESTS.json is a list; each request is one of
//   {"op": "build", "spec": {...}, "dir": "OUTDIR"}   -> {"file": ..., "sha256": ...}
//   {"op": "parse-document", "file": "F"}             -> the fields the library read
//   {"op": "parse-status", "file": "F"}               -> the fields the library read
// and RESPONSES.json gets one object per request, or {"error": "..."}.
// The answers go to a file because the library prints stray lines to stdout.
//
// Field names are the wire's (OrganId, BussinessDocType, ...); dates and
// timestamps are the wire's text (yyyy/MM/dd, yyyy/MM/dd HH:mm:ss), turned
// into java.util.Date and back with the library's own DateUtils.

import com.vnpt.xml.base.Content;
import com.vnpt.xml.base.attachment.Attachment;
import com.vnpt.xml.base.body.Body;
import com.vnpt.xml.base.body.Reference;
import com.vnpt.xml.base.header.Bussiness;
import com.vnpt.xml.base.header.BussinessDocumentInfo;
import com.vnpt.xml.base.header.Header;
import com.vnpt.xml.base.header.OrganIdList;
import com.vnpt.xml.base.header.Organization;
import com.vnpt.xml.base.header.Receiver;
import com.vnpt.xml.base.header.ReceiverList;
import com.vnpt.xml.base.header.ReplacementInfo;
import com.vnpt.xml.base.header.ReplacementInfoList;
import com.vnpt.xml.base.header.ResponseFor;
import com.vnpt.xml.base.header.ResponseForTask;
import com.vnpt.xml.base.header.Signature;
import com.vnpt.xml.base.header.SignerInfo;
import com.vnpt.xml.base.header.StaffInfo;
import com.vnpt.xml.base.header.TraceHeader;
import com.vnpt.xml.base.header.TraceHeaderList;
import com.vnpt.xml.base.util.DateUtils;
import com.vnpt.xml.ed.Ed;
import com.vnpt.xml.ed.builder.EdXmlBuilder;
import com.vnpt.xml.ed.header.Code;
import com.vnpt.xml.ed.header.DocumentType;
import com.vnpt.xml.ed.header.MessageHeader;
import com.vnpt.xml.ed.header.OtherInfo;
import com.vnpt.xml.ed.header.PromulgationInfo;
import com.vnpt.xml.ed.parser.EdXmlParser;
import com.vnpt.xml.status.Status;
import com.vnpt.xml.status.builder.StatusXmlBuilder;
import com.vnpt.xml.status.header.MessageStatus;
import com.vnpt.xml.status.parser.StatusXmlParser;

import java.io.File;
import java.io.FileInputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class Edxml102Driver {

    private static final String DATE = "yyyy/MM/dd";
    private static final String TIMESTAMP = "yyyy/MM/dd HH:mm:ss";

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: Edxml102Driver REQUESTS.json RESPONSES.json");
            System.exit(2);
        }
        String text = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8);
        List<Object> requests = asList(new Json(text).value());
        List<Object> responses = new ArrayList<>();
        for (Object request : requests) {
            responses.add(handle(asMap(request)));
        }
        Files.writeString(Path.of(args[1]), Json.write(responses), StandardCharsets.UTF_8);
    }

    private static Object handle(Map<String, Object> request) {
        try {
            String op = str(request, "op");
            switch (op) {
                case "build":
                    return build(asMap(request.get("spec")), str(request, "dir"));
                case "parse-document":
                    return parseDocument(new File(str(request, "file")));
                case "parse-status":
                    return parseStatus(new File(str(request, "file")));
                default:
                    throw new IllegalArgumentException("unknown op " + op);
            }
        } catch (Throwable error) {
            StringWriter trace = new StringWriter();
            error.printStackTrace(new PrintWriter(trace));
            Map<String, Object> failed = new LinkedHashMap<>();
            failed.put("error", trace.toString());
            return failed;
        }
    }

    // -- building ---------------------------------------------------------------

    private static Object build(Map<String, Object> spec, String dir) throws Exception {
        Content content;
        if ("status".equals(str(spec, "kind"))) {
            Header header = new Header(
                messageStatus(spec), traceHeaderList(spec), signature(spec));
            content = StatusXmlBuilder.build(new Status(header), dir);
        } else {
            Header header = new Header(
                messageHeader(spec), traceHeaderList(spec), signature(spec));
            List<Attachment> attachments = new ArrayList<>();
            for (Object item : list(spec, "attachments")) {
                attachments.add(attachment(asMap(item)));
            }
            content = EdXmlBuilder.build(new Ed(header, attachments), dir);
        }
        if (content == null) {
            throw new IllegalStateException("the library built nothing (it returns null on errors)");
        }
        Map<String, Object> result = new LinkedHashMap<>();
        result.put("file", content.getContent().getPath());
        result.put("sha256", content.getHashCode());
        return result;
    }

    private static Signature signature(Map<String, Object> spec) {
        // The library writes an empty <Signature> for a Signature object it
        // never fills; true asks for that, as real senders' packages have it.
        return Boolean.TRUE.equals(spec.get("signature")) ? new Signature() : null;
    }

    private static MessageHeader messageHeader(Map<String, Object> spec) {
        MessageHeader header = new MessageHeader();
        header.setFrom(organization(asMap(spec.get("From"))));
        for (Object to : list(spec, "To")) {
            header.addTo(organization(asMap(to)));
        }
        // The library makes up a UUID DocumentId unless told otherwise.
        if (spec.containsKey("DocumentId")) {
            header.setDocumentId(str(spec, "DocumentId"));
        }
        Map<String, Object> code = asMap(spec.get("Code"));
        header.setCode(new Code(str(code, "CodeNumber"), str(code, "CodeNotation")));
        Map<String, Object> promulgation = asMap(spec.get("PromulgationInfo"));
        header.setPromulgationInfo(new PromulgationInfo(
            str(promulgation, "Place"), date(str(promulgation, "PromulgationDate"))));
        Map<String, Object> type = asMap(spec.get("DocumentType"));
        if (type != null) {
            header.setDocumentType(type.containsKey("TypeDetail")
                ? new DocumentType(integer(type, "Type"), integer(type, "TypeDetail"), str(type, "TypeName"))
                : new DocumentType(integer(type, "Type"), str(type, "TypeName")));
        }
        header.setSubject(str(spec, "Subject"));
        header.setContent(str(spec, "Content"));
        Map<String, Object> signer = asMap(spec.get("SignerInfo"));
        if (signer != null) {
            header.setSignerInfo(new SignerInfo(
                str(signer, "Competence"), str(signer, "Position"), str(signer, "FullName")));
        }
        header.setDueDate(date(str(spec, "DueDate")));
        for (Object place : list(spec, "ToPlaces")) {
            header.addToPlace((String) place);
        }
        Map<String, Object> other = asMap(spec.get("OtherInfo"));
        if (other != null) {
            OtherInfo info = new OtherInfo(
                integer(other, "Priority"), str(other, "SphereOfPromulgation"),
                str(other, "TyperNotation"), integer(other, "PromulgationAmount"),
                integer(other, "PageAmount"), str(other, "ReplyFors"),
                Boolean.TRUE.equals(other.get("Direction")), str(other, "ReferenceCodes"));
            List<String> appendixes = new ArrayList<>();
            for (Object appendix : list(other, "Appendixes")) {
                appendixes.add((String) appendix);
            }
            if (!appendixes.isEmpty()) {
                info.setAppendixes(appendixes);
            }
            header.setOtherInfo(info);
        }
        for (Object response : list(spec, "ResponseFor")) {
            header.addResponseFor(responseFor(asMap(response)));
        }
        if (spec.containsKey("SteeringType")) {
            header.setSteeringType(integer(spec, "SteeringType"));
        }
        if (spec.containsKey("ResponseForTask")) {
            ResponseForTask task = new ResponseForTask();
            for (Object code2 : list(spec, "ResponseForTask")) {
                task.addTaskCode((String) code2);
            }
            header.setResponseForTask(task);
        }
        header.setApplicationType(str(spec, "ApplicationType"));
        return header;
    }

    private static MessageStatus messageStatus(Map<String, Object> spec) {
        MessageStatus status = new MessageStatus();
        status.setFrom(organization(asMap(spec.get("From"))));
        status.setResponseFor(responseFor(asMap(spec.get("ResponseFor"))));
        Map<String, Object> staff = asMap(spec.get("StaffInfo"));
        if (staff != null) {
            status.setStaffInfo(staffInfo(staff));
        }
        status.setStatusCode(str(spec, "StatusCode"));
        status.setDescription(str(spec, "Description"));
        status.setTimestamp(timestamp(str(spec, "Timestamp")));
        return status;
    }

    private static TraceHeaderList traceHeaderList(Map<String, Object> spec) {
        Map<String, Object> trace = asMap(spec.get("TraceHeaderList"));
        if (trace == null) {
            return null;
        }
        TraceHeaderList list = new TraceHeaderList();
        list.setId(str(trace, "id"));
        list.setVersion(str(trace, "version"));
        list.setPaper(str(trace, "Paper"));
        for (Object hop : list(trace, "TraceHeader")) {
            Map<String, Object> h = asMap(hop);
            list.addTraceHeader(new TraceHeader(str(h, "OrganId"), timestamp(str(h, "Timestamp"))));
        }
        Map<String, Object> b = asMap(trace.get("Bussiness"));
        if (b != null) {
            Bussiness business = new Bussiness(
                str(b, "DocumentId"), str(b, "BussinessDocType"),
                str(b, "BussinessDocReason"), str(b, "Paper"));
            for (Object item : list(b, "BussinessDocumentInfo")) {
                Map<String, Object> i = asMap(item);
                BussinessDocumentInfo info = new BussinessDocumentInfo();
                info.setdocumentInfo(str(i, "DocumentInfo"));
                info.setdocumentReceiver(str(i, "DocumentReceiver"));
                for (Object receivers : list(i, "ReceiverList")) {
                    ReceiverList receiverList = new ReceiverList();
                    for (Object r : asList(receivers)) {
                        Map<String, Object> receiver = asMap(r);
                        receiverList.addReceiver(new Receiver(
                            str(receiver, "OrganId"), str(receiver, "ReceiverType")));
                    }
                    info.addreceiverList(receiverList);
                }
                business.addBussinessDocumentInfo(info);
            }
            for (Object item : list(b, "ReplacementInfoList")) {
                ReplacementInfoList replacements = new ReplacementInfoList();
                for (Object r : asList(item)) {
                    Map<String, Object> replacement = asMap(r);
                    OrganIdList organs = new OrganIdList();
                    for (Object organ : list(replacement, "OrganIdList")) {
                        organs.addOrganId((String) organ);
                    }
                    replacements.addReplacementInfo(
                        new ReplacementInfo(str(replacement, "DocumentId"), organs));
                }
                business.addReplacementInfoList(replacements);
            }
            for (Object item : list(b, "StaffInfo")) {
                business.addStaffInfo(staffInfo(asMap(item)));
            }
            list.setBussiness(business);
        }
        return list;
    }

    private static Organization organization(Map<String, Object> o) {
        if (o == null) {
            return null;
        }
        return new Organization(
            str(o, "OrganId"), str(o, "OrganizationInCharge"), str(o, "OrganName"),
            str(o, "OrganAdd"), str(o, "Email"), str(o, "Telephone"), str(o, "Fax"),
            str(o, "Website"));
    }

    private static ResponseFor responseFor(Map<String, Object> r) {
        return new ResponseFor(
            str(r, "OrganId"), str(r, "Code"), date(str(r, "PromulgationDate")),
            str(r, "DocumentId"));
    }

    private static StaffInfo staffInfo(Map<String, Object> s) {
        return new StaffInfo(
            str(s, "Department"), str(s, "DepartmentId"), str(s, "Staff"), str(s, "StaffId"),
            str(s, "Email"), str(s, "Mobile"));
    }

    private static Attachment attachment(Map<String, Object> a) {
        Attachment attachment = new Attachment(
            str(a, "ContentId"), str(a, "AttachmentName"), str(a, "Description"),
            new File(str(a, "file")));
        attachment.setFieldName(str(a, "FieldName"));
        attachment.setMimeType(str(a, "MimeType"));
        return attachment;
    }

    // -- parsing ----------------------------------------------------------------

    private static Object parseDocument(File file) throws Exception {
        Ed ed;
        try (FileInputStream in = new FileInputStream(file)) {
            ed = EdXmlParser.getInstance().parse(in);
        }
        Map<String, Object> out = header(ed.getHeader());
        MessageHeader m = (MessageHeader) ed.getHeader().getMessageHeader();
        Map<String, Object> message = new LinkedHashMap<>();
        message.put("From", organization(m.getFrom()));
        List<Object> toes = new ArrayList<>();
        if (m.getToes() != null) {
            for (Organization to : m.getToes()) {
                toes.add(organization(to));
            }
        }
        message.put("To", toes);
        message.put("DocumentId", m.getDocumentId());
        if (m.getCode() != null) {
            Map<String, Object> code = new LinkedHashMap<>();
            code.put("CodeNumber", m.getCode().getCodeNumber());
            code.put("CodeNotation", m.getCode().getCodeNotation());
            message.put("Code", code);
        }
        if (m.getPromulgationInfo() != null) {
            Map<String, Object> p = new LinkedHashMap<>();
            p.put("Place", m.getPromulgationInfo().getPlace());
            p.put("PromulgationDate", DateUtils.format(m.getPromulgationInfo().getPromulgationDate(), DATE));
            message.put("PromulgationInfo", p);
        }
        if (m.getDocumentType() != null) {
            Map<String, Object> t = new LinkedHashMap<>();
            t.put("Type", m.getDocumentType().getType());
            t.put("TypeDetail", m.getDocumentType().getTypeDetail());
            t.put("TypeName", m.getDocumentType().getTypeName());
            message.put("DocumentType", t);
        }
        message.put("Subject", m.getSubject());
        message.put("Content", m.getContent());
        if (m.getSignerInfo() != null) {
            Map<String, Object> s = new LinkedHashMap<>();
            s.put("Competence", m.getSignerInfo().getCompetence());
            s.put("Position", m.getSignerInfo().getPosition());
            s.put("FullName", m.getSignerInfo().getFullName());
            message.put("SignerInfo", s);
        }
        message.put("DueDate", DateUtils.format(m.getDueDate(), DATE));
        message.put("ToPlaces", m.getToPlaces() == null ? new ArrayList<>() : new ArrayList<Object>(m.getToPlaces()));
        OtherInfo o = m.getOtherInfo();
        if (o != null) {
            Map<String, Object> other = new LinkedHashMap<>();
            other.put("Priority", o.getPriority());
            other.put("SphereOfPromulgation", o.getSphereOfPromulgation());
            other.put("TyperNotation", o.getTyperNotation());
            other.put("PromulgationAmount", o.getPromulgationAmount());
            other.put("PageAmount", o.getPageAmount());
            other.put("ReplyFors", o.getReplyFors());
            other.put("Direction", o.isDirection());
            other.put("ReferenceCodes", o.getReferenceCodes());
            other.put("Appendixes", o.getAppendixes() == null ? new ArrayList<>() : new ArrayList<Object>(o.getAppendixes()));
            message.put("OtherInfo", other);
        }
        List<Object> responses = new ArrayList<>();
        if (m.getResponseFor() != null) {
            for (ResponseFor r : m.getResponseFor()) {
                responses.add(responseFor(r));
            }
        }
        message.put("ResponseFor", responses);
        message.put("SteeringType", m.getSteeringType());
        message.put("ResponseForTask", m.getResponseForTask() == null ? null : new ArrayList<Object>(m.getResponseForTask().getTaskCodes()));
        message.put("ApplicationType", m.getApplicationType());
        out.put("MessageHeader", message);

        Body body = ed.getBody();
        if (body != null && body.getManifest() != null) {
            Map<String, Object> manifest = new LinkedHashMap<>();
            manifest.put("version", body.getManifest().getVersion());
            List<Object> references = new ArrayList<>();
            if (body.getManifest().getReferences() != null) {
                for (Reference r : body.getManifest().getReferences()) {
                    Map<String, Object> ref = new LinkedHashMap<>();
                    ref.put("ContentId", r.getContentId());
                    ref.put("ContentType", r.getContentType());
                    ref.put("Description", r.getDescription());
                    ref.put("AttachmentName", r.getAttachmentName());
                    references.add(ref);
                }
            }
            manifest.put("Reference", references);
            out.put("edXMLManifest", manifest);
        }
        List<Object> attachments = new ArrayList<>();
        if (ed.getAttachments() != null) {
            for (Attachment a : ed.getAttachments()) {
                Map<String, Object> attachment = new LinkedHashMap<>();
                attachment.put("ContentId", a.getContentId());
                attachment.put("AttachmentName", a.getName());
                attachment.put("Description", a.getDescription());
                attachment.put("ContentType", a.getContentType());
                attachment.put("FieldName", a.getFieldName());
                attachment.put("MimeType", a.getMimeType());
                attachment.put("format", a.getFormat());
                File content = a.getContent();
                attachment.put("file", content == null ? null : content.getPath());
                attachment.put("sha256", content == null ? null : sha256(Files.readAllBytes(content.toPath())));
                attachments.add(attachment);
            }
        }
        out.put("Attachment", attachments);
        return out;
    }

    private static Object parseStatus(File file) throws Exception {
        Status status;
        try (FileInputStream in = new FileInputStream(file)) {
            status = StatusXmlParser.parse(in);
        }
        Map<String, Object> out = header(status.getHeader());
        MessageStatus m = (MessageStatus) status.getHeader().getMessageHeader();
        Map<String, Object> message = new LinkedHashMap<>();
        message.put("From", organization(m.getFrom()));
        message.put("ResponseFor", m.getResponseFor() == null ? null : responseFor(m.getResponseFor()));
        message.put("StaffInfo", m.getStaffInfo() == null ? null : staffInfo(m.getStaffInfo()));
        message.put("StatusCode", m.getStatusCode());
        message.put("Description", m.getDescription());
        message.put("Timestamp", DateUtils.format(m.getTimestamp(), TIMESTAMP));
        out.put("MessageHeader", message);
        return out;
    }

    private static Map<String, Object> header(Header header) {
        Map<String, Object> out = new LinkedHashMap<>();
        TraceHeaderList trace = header.getTraceHeaderList();
        if (trace != null) {
            Map<String, Object> t = new LinkedHashMap<>();
            t.put("id", trace.getId());
            t.put("version", trace.getVersion());
            t.put("Paper", trace.getPaper());
            List<Object> hops = new ArrayList<>();
            if (trace.getTraceHeaders() != null) {
                for (TraceHeader hop : trace.getTraceHeaders()) {
                    Map<String, Object> h = new LinkedHashMap<>();
                    h.put("OrganId", hop.getOrganId());
                    h.put("Timestamp", DateUtils.format(hop.getTimestamp(), TIMESTAMP));
                    hops.add(h);
                }
            }
            t.put("TraceHeader", hops);
            Bussiness b = trace.getBussiness();
            if (b != null) {
                Map<String, Object> business = new LinkedHashMap<>();
                business.put("DocumentId", b.getDocumentId());
                business.put("BussinessDocType", b.getBussinessDocType());
                business.put("BussinessDocReason", b.getBussinessDocReason());
                business.put("Paper", b.getPaper());
                List<Object> infos = new ArrayList<>();
                if (b.getBussinessDocumentInfo() != null) {
                    for (BussinessDocumentInfo i : b.getBussinessDocumentInfo()) {
                        Map<String, Object> info = new LinkedHashMap<>();
                        info.put("DocumentInfo", i.getdocumentInfo());
                        info.put("DocumentReceiver", i.getdocumentReceiver());
                        List<Object> lists = new ArrayList<>();
                        if (i.getreceiverList() != null) {
                            for (ReceiverList rl : i.getreceiverList()) {
                                List<Object> receivers = new ArrayList<>();
                                if (rl.getReceiver() != null) {
                                    for (Receiver r : rl.getReceiver()) {
                                        Map<String, Object> receiver = new LinkedHashMap<>();
                                        receiver.put("OrganId", r.getOrganId());
                                        receiver.put("ReceiverType", r.getReceiverType());
                                        receivers.add(receiver);
                                    }
                                }
                                lists.add(receivers);
                            }
                        }
                        info.put("ReceiverList", lists);
                        infos.add(info);
                    }
                }
                business.put("BussinessDocumentInfo", infos);
                List<Object> replacementLists = new ArrayList<>();
                if (b.getReplacementInfoList() != null) {
                    for (ReplacementInfoList rl : b.getReplacementInfoList()) {
                        List<Object> replacements = new ArrayList<>();
                        if (rl.getReplacementInfo() != null) {
                            for (ReplacementInfo r : rl.getReplacementInfo()) {
                                Map<String, Object> replacement = new LinkedHashMap<>();
                                replacement.put("DocumentId", r.getDocumentId());
                                List<Object> organs = new ArrayList<>();
                                if (r.getOrganIdList() != null && r.getOrganIdList().getOrganId() != null) {
                                    organs.addAll(r.getOrganIdList().getOrganId());
                                }
                                replacement.put("OrganIdList", organs);
                                replacements.add(replacement);
                            }
                        }
                        replacementLists.add(replacements);
                    }
                }
                business.put("ReplacementInfoList", replacementLists);
                List<Object> staff = new ArrayList<>();
                if (b.getStaffInfo() != null) {
                    for (StaffInfo s : b.getStaffInfo()) {
                        staff.add(staffInfo(s));
                    }
                }
                business.put("StaffInfo", staff);
                t.put("Bussiness", business);
            }
            out.put("TraceHeaderList", t);
        }
        Signature signature = header.getSignature();
        if (signature != null) {
            Map<String, Object> s = new LinkedHashMap<>();
            s.put("SignatureValue", signature.getSignatureValue());
            s.put("hasSignedInfo", signature.getSignedInfo() != null);
            s.put("hasKeyInfo", signature.getKeyInfo() != null);
            out.put("Signature", s);
        }
        return out;
    }

    private static Map<String, Object> organization(Organization o) {
        if (o == null) {
            return null;
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("OrganId", o.getOrganId());
        out.put("OrganizationInCharge", o.getOrganizationInCharge());
        out.put("OrganName", o.getOrganName());
        out.put("OrganAdd", o.getOrganAdd());
        out.put("Email", o.getEmail());
        out.put("Telephone", o.getTelephone());
        out.put("Fax", o.getFax());
        out.put("Website", o.getWebsite());
        return out;
    }

    private static Map<String, Object> responseFor(ResponseFor r) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("OrganId", r.getOrganId());
        out.put("Code", r.getCode());
        out.put("PromulgationDate", DateUtils.format(r.getPromulgationDate(), DATE));
        out.put("DocumentId", r.getDocumentId());
        return out;
    }

    private static Map<String, Object> staffInfo(StaffInfo s) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("Department", s.getDepartment());
        out.put("DepartmentId", s.getDepartmentId());
        out.put("Staff", s.getStaff());
        out.put("StaffId", s.getStaffId());
        out.put("Email", s.getEmail());
        out.put("Mobile", s.getMobile());
        return out;
    }

    // -- small helpers ----------------------------------------------------------

    private static Date date(String text) {
        return text == null ? null : DateUtils.parse(text, DATE);
    }

    private static Date timestamp(String text) {
        return text == null ? null : DateUtils.parse(text, TIMESTAMP);
    }

    private static String sha256(byte[] data) throws Exception {
        StringBuilder hex = new StringBuilder();
        for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }

    private static String str(Map<String, Object> map, String key) {
        Object value = map == null ? null : map.get(key);
        return value == null ? null : value.toString();
    }

    private static int integer(Map<String, Object> map, String key) {
        Object value = map.get(key);
        return value == null ? 0 : ((Number) value).intValue();
    }

    private static List<Object> list(Map<String, Object> map, String key) {
        Object value = map == null ? null : map.get(key);
        return value == null ? new ArrayList<>() : asList(value);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> asMap(Object value) {
        return (Map<String, Object>) value;
    }

    @SuppressWarnings("unchecked")
    private static List<Object> asList(Object value) {
        return (List<Object>) value;
    }

    /** The JSON this driver needs: objects, arrays, strings, numbers, true, false, null. */
    private static final class Json {
        private final String text;
        private int at;

        Json(String text) {
            this.text = text;
        }

        Object value() {
            skip();
            char c = text.charAt(at);
            if (c == '{') {
                Map<String, Object> map = new LinkedHashMap<>();
                at++;
                skip();
                if (text.charAt(at) == '}') {
                    at++;
                    return map;
                }
                while (true) {
                    skip();
                    String key = string();
                    skip();
                    expect(':');
                    map.put(key, value());
                    skip();
                    if (text.charAt(at) == ',') {
                        at++;
                        continue;
                    }
                    expect('}');
                    return map;
                }
            }
            if (c == '[') {
                List<Object> list = new ArrayList<>();
                at++;
                skip();
                if (text.charAt(at) == ']') {
                    at++;
                    return list;
                }
                while (true) {
                    list.add(value());
                    skip();
                    if (text.charAt(at) == ',') {
                        at++;
                        continue;
                    }
                    expect(']');
                    return list;
                }
            }
            if (c == '"') {
                return string();
            }
            if (text.startsWith("true", at)) {
                at += 4;
                return Boolean.TRUE;
            }
            if (text.startsWith("false", at)) {
                at += 5;
                return Boolean.FALSE;
            }
            if (text.startsWith("null", at)) {
                at += 4;
                return null;
            }
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
            String number = text.substring(start, at);
            if (number.isEmpty()) {
                throw new IllegalArgumentException("bad JSON at " + start);
            }
            return number.contains(".") || number.contains("e") || number.contains("E")
                ? (Object) Double.valueOf(number) : (Object) Long.valueOf(number);
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (true) {
                char c = text.charAt(at++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char e = text.charAt(at++);
                switch (e) {
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'u':
                        out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                        at += 4;
                        break;
                    default: out.append(e);
                }
            }
        }

        private void skip() {
            while (at < text.length() && Character.isWhitespace(text.charAt(at))) {
                at++;
            }
        }

        private void expect(char c) {
            if (text.charAt(at) != c) {
                throw new IllegalArgumentException("expected " + c + " at " + at);
            }
            at++;
        }

        static String write(Object value) {
            StringBuilder out = new StringBuilder();
            write(value, out);
            return out.toString();
        }

        @SuppressWarnings("unchecked")
        private static void write(Object value, StringBuilder out) {
            if (value == null) {
                out.append("null");
            } else if (value instanceof String) {
                out.append('"');
                for (char c : ((String) value).toCharArray()) {
                    if (c == '"' || c == '\\') {
                        out.append('\\').append(c);
                    } else if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
                out.append('"');
            } else if (value instanceof Map) {
                out.append('{');
                boolean first = true;
                for (Map.Entry<String, Object> entry : ((Map<String, Object>) value).entrySet()) {
                    if (!first) {
                        out.append(',');
                    }
                    first = false;
                    write(entry.getKey(), out);
                    out.append(':');
                    write(entry.getValue(), out);
                }
                out.append('}');
            } else if (value instanceof List) {
                out.append('[');
                boolean first = true;
                for (Object item : (List<Object>) value) {
                    if (!first) {
                        out.append(',');
                    }
                    first = false;
                    write(item, out);
                }
                out.append(']');
            } else {
                out.append(value.toString());
            }
        }
    }
}
