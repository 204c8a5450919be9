"""The staff pages' words (console, desk, inbox, counter, vehicle, audit, login) in English (the
default) and Simplified Chinese: ``?lang=zh-CN`` or ``?lang=en`` on any staff page switches, and
the cookie ``carpulse_staff_lang`` (path ``/``) remembers it. It is not the member page's
``carpulse_lang`` (path ``/m``): a cookie of that name at ``/`` would shadow the member's own
choice there. Data (names, DTC texts, card titles, CRM reasons) is shown as stored."""

from __future__ import annotations

from typing import Final

LANGS: Final = ("en", "zh-CN")
DEFAULT: Final = "en"
COOKIE: Final = "carpulse_staff_lang"
# key -> (English, Chinese); ``{name}`` fields are filled by ``t`` (and escaped by Jinja after)
TEXT: Final[dict[str, tuple[str, str]]] = {
    "lang_other": ("中文", "English"),
    # base.html
    "nav_console": ("Console", "控制台"),
    "nav_inbox": ("Inbox", "服务收件箱"),
    "nav_counter": ("Counter", "柜台"),
    "nav_audit": ("Audit", "审计"),
    "who": ("{user} · {role} · dealer {dealer}", "{user} · {role} · 经销商 {dealer}"),
    "logout": ("Log out", "退出登录"),
    "alert_silent": ("SILENT CAR", "车辆失联"),
    "alert_crash": ("CRASH", "碰撞"),
    # login.html
    "login": ("Log in", "登录"),
    "username": ("User name", "用户名"),
    "password": ("Password", "密码"),
    "err_throttled": ("Too many failed logins; try later.", "登录失败次数过多，请稍后再试。"),
    "err_busy_login": ("The server is busy; try again.", "服务器繁忙，请重试。"),
    "err_wrong": ("Wrong user name or password.", "用户名或密码错误。"),
    # console.html, search_results.html
    "console": ("Console", "控制台"),
    "search_label": (
        "Search by VIN, plate, phone or member id",
        "按车架号、车牌、手机号或会员号搜索",
    ),
    "search": ("Search", "搜索"),
    "show": ("Show", "显示"),
    "show_all": ("all", "全部"),
    "show_online": ("online", "在线"),
    "show_offline": ("offline", "离线"),
    "show_moving": ("moving", "行驶中"),
    "show_alert": ("alert", "告警"),
    "filter": ("Filter", "筛选"),
    "filter_hint": ("VIN, plate or model", "车架号、车牌或车型"),
    "no_match": ("No vehicle of your dealer matches “{q}”.", "本经销商没有与“{q}”匹配的车辆。"),
    "vin": ("VIN", "车架号"),
    "plate": ("Plate", "车牌"),
    "model": ("Model", "车型"),
    "customer": ("Customer", "客户"),
    "phone": ("Phone", "手机号"),
    "tier": ("Tier", "会员等级"),
    # desk.html
    "queue": ("Call-centre queue", "呼叫中心队列"),
    "open_n": ("({n} open)", "（{n} 条待处理）"),
    "no_cards": ("No open cards.", "没有待处理的卡片。"),
    "handled": ("Handled", "已处理"),
    "security": ("Security queue", "安全队列"),
    "security_sub": (
        "(CAN intrusions seen by the cars · {n} open)",
        "（车辆发现的总线入侵 · {n} 条待处理）",
    ),
    "no_intrusion": ("No intrusion reported.", "没有入侵报告。"),
    "fleet": ("Fleet", "车队"),
    "fleet_sub": (
        "{shown} shown · {online} online · {moving} moving · {alert} with an alert",
        "显示 {shown} 辆 · 在线 {online} · 行驶 {moving} · 告警 {alert}",
    ),
    "device": ("Device", "设备"),
    "moving": ("Moving", "行驶"),
    "alert": ("Alert", "告警"),
    "health": ("Health", "健康"),
    "last_seen": ("Last seen", "最后在线"),
    "is_moving": ("moving", "行驶中"),
    "stopped": ("stopped", "停止"),
    "no_vehicle_match": ("No vehicle matches.", "没有匹配的车辆。"),
    # inbox.html
    "inbox": ("Service inbox", "服务收件箱"),
    "nothing_waiting": ("Nothing waiting.", "暂无待办。"),
    "no_vehicle_on_file": ("no vehicle on file", "无登记车辆"),
    "tier_of": ("tier {tier}", "等级 {tier}"),
    "coupons_n": ("{n} coupon(s)", "{n} 张优惠券"),
    "not_due": (" (not due yet)", "（尚未到期）"),
    "due": ("due {date}", "到期 {date}"),
    "or_in_km": (" or in {km} km", "，或再行驶 {km} 公里"),
    "likely_in": ("likely in {window}", "可能在 {window}"),
    "confidence": ("confidence {c}", "置信度 {c}"),
    "oil_left": ("oil life left {pct} %", "机油剩余寿命 {pct} %"),
    "part_service_due": ("Service", "保养"),
    "part_oil_life": ("Oil", "机油"),
    "part_battery": ("Battery", "蓄电池"),
    "expert_queue": (
        "In the expert queue: an expert card exists for this fault.",
        "已转专家队列：此故障已有专家卡片。",
    ),
    "arrived": ("Arrived {at} UTC", "到店时间 {at} UTC"),
    "acknowledge": ("Acknowledge", "确认"),
    "book": ("Book", "预约"),
    "issue_coupon": ("Issue coupon", "发放优惠券"),
    # counter.html (English keeps the counter's Chinese beside it, as it always had)
    "counter": ("Counter · 柜台核销", "柜台核销"),
    "redeem_title": ("Redeem a coupon · 核销优惠券", "核销优惠券"),
    "redeem_help": (
        "Scan the member's QR code into the field, or type the code (spaces, dashes and lower "
        "case are fine).",
        "将会员的二维码扫入输入框，或手动输入券码（可含空格、短横线或小写字母）。",
    ),
    "redeem": ("Redeem · 核销", "核销"),
    "redeemed": ("Redeemed {code}: {title}", "已核销 {code}：{title}"),
    "refused": ("Refused: {why}", "已拒绝：{why}"),
    "close_title": ("Close a service visit · 结单", "结单"),
    "close_help": (
        "The amount earns the vehicle's owner points (1 per {cny} CNY, crm/loyalty.yaml); "
        "closing the same car again today corrects the amount.",
        "车主按金额获得积分（每 {cny} 元 1 分，见 crm/loyalty.yaml）；当天再次为同一辆车结单会更正金额。",
    ),
    "vin_or_plate": ("VIN or plate · 车架号或车牌", "车架号或车牌"),
    "amount": ("Amount (CNY) · 金额（元）", "金额（元）"),
    "odometer_label": ("Odometer (km) · 里程", "里程（公里）"),
    "odometer_hint": ("the last recorded", "最近一次记录"),
    "work": ("Work · 维修内容", "维修内容"),
    "close": ("Close · 结单", "结单"),
    "closed": (
        "Closed {vin}: ¥{amount}, {points} points ({written} now); balance {balance}; tier {tier}",
        "已结单 {vin}：¥{amount}，{points} 积分（本次 {written}）；余额 {balance}；等级 {tier}",
    ),
    "was_tier": (" (was {tier})", "（原为 {tier}）"),
    "busy_scan": ("busy; scan again", "系统繁忙，请重新扫码"),
    "busy_retry": ("busy; try again", "系统繁忙，请重试"),
    "counter_bad": ("", "券码格式不正确"),
    "counter_unknown": ("", "没有这个券码的优惠券"),
    "counter_ambiguous": ("", "有两张优惠券以此开头，请输入完整券码"),
    "counter_other_dealer": ("", "该优惠券不属于本经销商"),
    "counter_redeemed": ("", "该优惠券已使用"),
    "counter_expired": ("", "该优惠券已过期"),
    "counter_voided": ("", "该优惠券已作废"),
    # vehicle.html
    "vehicle": ("Vehicle", "车辆"),
    "plate_device": ("Plate {plate} · device {device}", "车牌 {plate} · 设备 {device}"),
    "none": ("none", "无"),
    "speed": ("Speed", "车速"),
    "ignition": ("Ignition", "点火"),
    "on": ("on", "开"),
    "off": ("off", "关"),
    "energy": ("Fuel / SoC", "油量 / 电量"),
    "fuel": ("fuel", "油量"),
    "soc": ("SoC", "电量"),
    "odometer": ("Odometer", "里程"),
    "dtcs": ("DTCs", "故障码"),
    "location": ("Location", "位置"),
    "hidden": ("hidden", "已隐藏"),
    "no_phone": ("no phone", "无手机号"),
    "member_tier": ("Member tier", "会员等级"),
    "not_member": ("not a member", "非会员"),
    "points_n": ("{n} points", "{n} 积分"),
    "coupons": ("Coupons", "优惠券"),
    "until": ("until {date}", "有效期至 {date}"),
    "reveal": ("Reveal location", "查看位置"),
    "reason": ("Reason", "原因"),
    "reason_crash-response": ("Crash or medical emergency", "碰撞或医疗急救"),
    "reason_roadside-assistance": ("Breakdown assistance", "道路救援"),
    "reason_theft": ("Stolen vehicle (police reference)", "车辆被盗（需报案编号）"),
    "reason_customer-request": ("Customer asked on the phone", "客户来电要求"),
    "ticket": ("Ticket id", "工单号"),
    "revealed": ("Revealed for ticket {ticket}.", "已为工单 {ticket} 显示位置。"),
    "send_dest": ("Send destination to car", "向车辆发送目的地"),
    "address": ("Address", "地址"),
    "or_lat": ("or lat", "或纬度"),
    "lon": ("lon", "经度"),
    "send": ("Send", "发送"),
    "doors": ("Doors", "车门"),
    "confirm_vin": (
        "Confirm: type the last 6 characters of the VIN",
        "确认：输入车架号的后 6 位",
    ),
    "lock": ("Lock", "上锁"),
    "unlock": ("Unlock", "解锁"),
    "commands_off": (
        "Commands are off: no MQTT connection or signing key.",
        "远程指令不可用：没有 MQTT 连接或签名密钥。",
    ),
    # timeline.html (English keeps the Chinese beside it, as it always had)
    "timeline": ("Timeline", "车辆时间线"),
    "since_owner": (
        "Since the current owner's start, {date} · 当前车主期间",
        "当前车主期间，自 {date} 起",
    ),
    "all_history": ("All history (no owner on file)", "全部记录（无登记车主）"),
    "tl_empty": (
        "Nothing in this ownership period · 本车主期间无记录",
        "本车主期间无记录",
    ),
    # audit.html
    "audit": ("Audit log", "审计日志"),
    "at": ("At", "时间"),
    "actor": ("Actor", "操作人"),
    "action": ("Action", "操作"),
    "subject": ("Subject", "对象"),
    "purpose": ("Purpose", "目的"),
    "dealer": ("Dealer", "经销商"),
    "detail": ("Detail", "详情"),
    "platform": ("platform", "平台"),
}


def t(lang: str, key: str, **kw: object) -> str:
    """The words of ``key`` in ``lang`` (English for an unknown language), ``kw`` filled in."""
    en, zh = TEXT[key]
    words = zh if lang == "zh-CN" else en
    return words.format(**kw) if kw else words
