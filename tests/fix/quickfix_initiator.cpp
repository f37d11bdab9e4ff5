// A QuickFIX (C++) FIX 4.4 initiator driven line by line on stdin, for tests/test_fix_quickfix.py.
//
// It is an independent engine checking ringex's acceptor: QuickFIX runs its default
// validation (UseDataDictionary=Y with FIX44.xml, fields in order, values typed), keeps
// its own message store (FileStore: sequence numbers survive a restart of the
// initiator, as in production), and does its own gap detection and ResendRequests.
//
//   usage: quickfix_initiator SETTINGS_FILE ACCOUNT TOKEN
//
// Commands (one per line on stdin):
//   logon                                   start the initiator; prints LOGGEDON
//   order CLORDID SIDE QTY PRICE TIF TYPE [EXECINST]   NewOrderSingle (PRICE 0: none)
//   cancel CLORDID ORIG SIDE                OrderCancelRequest (symbol ACME)
//   replace CLORDID ORIG SIDE QTY PRICE     OrderCancelReplaceRequest
//   drop                                    stop without a Logout (the connection just goes)
//   logout                                  stop with a Logout; prints LOGGEDOUT
//   quit                                    print the summary and exit
// Output, one line each: APP <message with | for SOH> for every application message
// received (in order), ADMIN-REJECT-IN / ADMIN-REJECT-OUT <message> for every
// session-level Reject either way, and at the end
//   SUMMARY app=N rejects_in=N rejects_out=N business_rejects=N resend_requests_out=N

#include <quickfix/Application.h>
#include <quickfix/FileLog.h>
#include <quickfix/FileStore.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketInitiator.h>
#include <quickfix/fix44/NewOrderSingle.h>
#include <quickfix/fix44/OrderCancelReplaceRequest.h>
#include <quickfix/fix44/OrderCancelRequest.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

static std::mutex out_mutex;

static void emit(const std::string& line) {
  std::lock_guard<std::mutex> lock(out_mutex);
  std::cout << line << std::endl;
}

static std::string printable(const FIX::Message& message) {
  std::string text = message.toString();
  for (auto& c : text)
    if (c == '\001') c = '|';
  return text;
}

class Client : public FIX::Application {
 public:
  Client(const std::string& account, const std::string& token) : account_(account), token_(token) {}

  void onCreate(const FIX::SessionID&) override {}
  void onLogon(const FIX::SessionID& id) override {
    session_ = id;
    logged_on_ = true;
    emit("LOGGEDON");
  }
  void onLogout(const FIX::SessionID&) override {
    logged_on_ = false;
    emit("LOGGEDOUT");
  }
  void toAdmin(FIX::Message& message, const FIX::SessionID&) override {
    FIX::MsgType type;
    message.getHeader().getField(type);
    if (type == FIX::MsgType_Logon) {
      message.setField(FIX::Username(account_));
      message.setField(FIX::Password(token_));
    } else if (type == FIX::MsgType_Reject) {
      rejects_out_++;
      emit("ADMIN-REJECT-OUT " + printable(message));
    } else if (type == FIX::MsgType_ResendRequest) {
      resend_requests_out_++;
    }
  }
  void fromAdmin(const FIX::Message& message, const FIX::SessionID&) throw(FIX::FieldNotFound, FIX::IncorrectDataFormat,
                                                                          FIX::IncorrectTagValue, FIX::RejectLogon) override {
    FIX::MsgType type;
    message.getHeader().getField(type);
    if (type == FIX::MsgType_Reject) {
      rejects_in_++;
      emit("ADMIN-REJECT-IN " + printable(message));
    }
  }
  void toApp(FIX::Message&, const FIX::SessionID&) throw(FIX::DoNotSend) override {}
  void fromApp(const FIX::Message& message, const FIX::SessionID&) throw(FIX::FieldNotFound, FIX::IncorrectDataFormat,
                                                                        FIX::IncorrectTagValue,
                                                                        FIX::UnsupportedMessageType) override {
    FIX::MsgType type;
    message.getHeader().getField(type);
    if (type == FIX::MsgType_BusinessMessageReject) business_rejects_++;
    app_++;
    emit("APP " + printable(message));
  }

  bool logged_on() const { return logged_on_; }
  const FIX::SessionID& session() const { return session_; }
  std::string summary() const {
    std::ostringstream s;
    s << "SUMMARY app=" << app_ << " rejects_in=" << rejects_in_ << " rejects_out=" << rejects_out_
      << " business_rejects=" << business_rejects_ << " resend_requests_out=" << resend_requests_out_;
    return s.str();
  }

 private:
  std::string account_, token_;
  FIX::SessionID session_;
  std::atomic<bool> logged_on_{false};
  std::atomic<int> app_{0}, rejects_in_{0}, rejects_out_{0}, business_rejects_{0}, resend_requests_out_{0};
};

static char side_of(const std::string& side) { return side == "buy" ? FIX::Side_BUY : FIX::Side_SELL; }

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: quickfix_initiator SETTINGS_FILE ACCOUNT TOKEN" << std::endl;
    return 2;
  }
  try {
    FIX::SessionSettings settings(argv[1]);
    Client client(argv[2], argv[3]);
    FIX::FileStoreFactory store(settings);
    FIX::FileLogFactory log(settings);
    std::unique_ptr<FIX::SocketInitiator> initiator;
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string command;
      in >> command;
      if (command == "logon") {
        initiator.reset(new FIX::SocketInitiator(client, store, settings, log));
        initiator->start();
      } else if (command == "order") {
        std::string id, side, tif, type, exec_inst;
        long qty = 0, price = 0;
        in >> id >> side >> qty >> price >> tif >> type >> exec_inst;
        FIX44::NewOrderSingle order(FIX::ClOrdID(id), FIX::Side(side_of(side)), FIX::TransactTime(),
                                    FIX::OrdType(type[0]));
        order.set(FIX::Symbol("ACME"));
        order.set(FIX::OrderQty(qty));
        if (price) order.set(FIX::Price(price));
        if (tif != "-") order.set(FIX::TimeInForce(tif[0]));
        if (!exec_inst.empty()) order.set(FIX::ExecInst(exec_inst));
        FIX::Session::sendToTarget(order, client.session());
      } else if (command == "cancel") {
        std::string id, orig, side;
        in >> id >> orig >> side;
        FIX44::OrderCancelRequest cancel(FIX::OrigClOrdID(orig), FIX::ClOrdID(id), FIX::Side(side_of(side)),
                                         FIX::TransactTime());
        cancel.set(FIX::Symbol("ACME"));
        FIX::Session::sendToTarget(cancel, client.session());
      } else if (command == "replace") {
        std::string id, orig, side;
        long qty = 0, price = 0;
        in >> id >> orig >> side >> qty >> price;
        FIX44::OrderCancelReplaceRequest replace(FIX::OrigClOrdID(orig), FIX::ClOrdID(id), FIX::Side(side_of(side)),
                                                 FIX::TransactTime(), FIX::OrdType(FIX::OrdType_LIMIT));
        replace.set(FIX::Symbol("ACME"));
        replace.set(FIX::OrderQty(qty));
        replace.set(FIX::Price(price));
        FIX::Session::sendToTarget(replace, client.session());
      } else if (command == "drop") {
        initiator->stop(true);  // force: no Logout, the socket is just closed
        initiator.reset();
        emit("DROPPED");
      } else if (command == "logout") {
        initiator->stop();
        initiator.reset();
      } else if (command == "quit") {
        break;
      } else if (!command.empty()) {
        emit("UNKNOWN-COMMAND " + command);
      }
    }
    if (initiator) initiator->stop(true);
    emit(client.summary());
  } catch (std::exception& e) {
    std::cerr << "quickfix_initiator: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
