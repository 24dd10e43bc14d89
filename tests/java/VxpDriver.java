import com.google.gson.Gson;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.vpcp.services.AgencyServiceImp;
import com.vpcp.services.KnobstickServiceImp;
import com.vpcp.services.VnptProperties;
import com.vpcp.services.model.Agency;
import com.vpcp.services.model.BasicResult;
import com.vpcp.services.model.GetAgenciesResult;
import com.vpcp.services.model.GetEdocResult;
import com.vpcp.services.model.GetReceivedEdocResult;
import com.vpcp.services.model.GetSendEdocResult;
import com.vpcp.services.model.Knobstick;
import com.vpcp.services.model.SendEdocResult;
import com.vpcp.services.model.StatusResult;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Drives SDKVXP-2.0.0 for tests/integration/test_gateway_sdk.py, one command a line on stdin.
 *
 * <p>Each command is a JSON object: {"system", "secret", "endpoint", "store", "op",
 * "headers" (the SDK's jsonHeaders, as a JSON object), "file" (sendEdoc), "body"
 * (registerAgency)}. One service object per system and secret is kept for the whole run,
 * as a QLVB keeps it, so parameters of earlier calls travel along as the SDK sends them.
 * Each result is one line "@@RESULT " + JSON on stdout (the SDK prints lines of its own
 * there); a result the SDK returned as null is {"null": true}.
 */
public final class VxpDriver {
    private static final Gson GSON = new Gson();
    private static final Map<String, KnobstickServiceImp> DOCUMENTS = new HashMap<>();
    private static final Map<String, AgencyServiceImp> AGENCIES = new HashMap<>();

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isBlank()) {
                continue;
            }
            JsonObject command = JsonParser.parseString(line).getAsJsonObject();
            Map<String, Object> result;
            try {
                result = run(command);
            } catch (Exception error) {
                result = new HashMap<>();
                result.put("exception", error.toString());
            }
            System.out.println("@@RESULT " + GSON.toJson(result));
            System.out.flush();
        }
    }

    private static VnptProperties properties(JsonObject command) {
        return new VnptProperties(
                command.get("endpoint").getAsString(),
                command.get("system").getAsString(),
                command.get("secret").getAsString(),
                command.get("store").getAsString(),
                10,
                3);
    }

    private static String key(JsonObject command) {
        return command.get("system").getAsString() + "\n" + command.get("secret").getAsString();
    }

    private static Map<String, Object> run(JsonObject command) throws Exception {
        String op = command.get("op").getAsString();
        String headers = command.has("headers") ? command.get("headers").toString() : "{}";
        if (op.equals("getAgenciesList") || op.equals("registerAgency") || op.equals("deleteAgency")) {
            AgencyServiceImp agencies =
                    AGENCIES.computeIfAbsent(key(command), k -> new AgencyServiceImp(properties(command)));
            switch (op) {
                case "getAgenciesList": {
                    GetAgenciesResult result = agencies.getAgenciesList(headers);
                    Map<String, Object> out = basic(result);
                    if (result != null && result.getAgencies() != null) {
                        List<String> codes = new ArrayList<>();
                        for (Agency agency : result.getAgencies()) {
                            codes.add(agency.getCode());
                        }
                        out.put("codes", codes);
                    }
                    return out;
                }
                case "registerAgency":
                    return basic(agencies.registerAgency(headers, command.get("body").toString()));
                default:
                    return basic(agencies.deleteAgency(headers));
            }
        }
        KnobstickServiceImp documents =
                DOCUMENTS.computeIfAbsent(key(command), k -> new KnobstickServiceImp(properties(command)));
        switch (op) {
            case "sendEdoc": {
                SendEdocResult result = documents.sendEdoc(headers, command.get("file").getAsString());
                Map<String, Object> out = basic(result);
                if (result != null) {
                    out.put("docId", result.getDocID());
                }
                return out;
            }
            case "getReceivedEdocList": {
                GetReceivedEdocResult result = documents.getReceivedEdocList(headers);
                Map<String, Object> out = basic(result);
                if (result != null && result.getKnobsticks() != null) {
                    List<Map<String, Object>> items = new ArrayList<>();
                    for (Knobstick knobstick : result.getKnobsticks()) {
                        Map<String, Object> item = new HashMap<>();
                        item.put("id", knobstick.getId());
                        item.put("from", knobstick.getFrom());
                        item.put("to", knobstick.getTo());
                        item.put("messageType", knobstick.getMessageType());
                        item.put("status", knobstick.getStatus());
                        items.add(item);
                    }
                    out.put("items", items);
                }
                return out;
            }
            case "getEdoc": {
                GetEdocResult result = documents.getEdoc(headers);
                Map<String, Object> out = basic(result);
                if (result != null) {
                    out.put("filePath", result.getFilePath());
                    out.put("data", result.getData());
                }
                return out;
            }
            case "updateStatus":
                return basic(documents.updateStatus(headers));
            case "getSentEdocList": {
                GetSendEdocResult result = documents.getSentEdocList(headers);
                Map<String, Object> out = basic(result);
                if (result != null && result.getStatusResult() != null) {
                    List<Map<String, Object>> lines = new ArrayList<>();
                    for (StatusResult status : result.getStatusResult()) {
                        Map<String, Object> item = new HashMap<>();
                        item.put("senderDocId", status.getSenderDocId());
                        item.put("receiverDocId", status.getReceiverDocId());
                        item.put("toCode", status.getToCode());
                        item.put("sendStatus", status.getSendStatus());
                        item.put("receiveStatus", status.getReceiveStatus());
                        lines.add(item);
                    }
                    out.put("lines", lines);
                }
                return out;
            }
            default:
                throw new IllegalArgumentException("unknown operation " + op);
        }
    }

    private static Map<String, Object> basic(BasicResult result) {
        Map<String, Object> out = new HashMap<>();
        if (result == null) {
            out.put("null", true);
            return out;
        }
        out.put("status", result.getStatus());
        out.put("errorCode", result.getErrorCode());
        out.put("errorDesc", result.getErrorDesc());
        return out;
    }
}
