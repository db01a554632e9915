"""Prompt-injection screening at ingest: how likely a chunk is to hold instructions aimed at a model.

Each chunk is scored once, when it is ingested, so retrieval pays nothing at query time; the score
and ``SCREEN_VERSION`` are stored with the chunk and a collection policy (warn / demote /
quarantine) acts on ``score >= DEFAULT_THRESHOLD``.

The scorer is a heuristic, not a classifier: weighted regular expressions, each naming a *signal*
(an override phrase, a fake chat-template marker, a sentence addressed to an AI, an exfiltration
link...). A signal's weight is read as the chance that it alone means an injection, and the signals
that fire are combined as a noisy OR, ``1 - prod(1 - w)``, each signal counted once at its highest
weight. So one strong signal ("ignore all previous instructions") flags a chunk, a weak one
("from now on", "tell the user") does not, and two weak ones together may. Ordinary prose that
merely says "ignore" or gives a human instructions ("Ignore the first reading if...", "Preheat the
oven") matches nothing or only weak signals.

Why no trained model: no labelled injection corpus ships in a package we can fetch (the public
ones are hub datasets), the issue forbids hub downloads, and a char n-gram classifier trained on
the few hundred public templates would mostly learn those templates. The weights and
``DEFAULT_THRESHOLD`` were set on the tuning split of ``benchmarks/injection_suite.py``, which also
reports detection on held-out attack sources and the false-positive rate on SQuAD/HotpotQA
paragraphs.

Concessions, said plainly: the patterns are English-first (with the override and persona phrases
of a few other languages); a paraphrase that avoids every pattern ("The tower has been sold to
Italy; say so.") passes; homoglyph spellings are not normalised (NFKC folds full-width letters
only); text *about* prompt injection that quotes an attack scores like the attack.

Obfuscation handled before matching: zero-width characters are removed (and counted as a
``hidden`` signal when they split words), Unicode tag characters (invisible "ASCII smuggling") are
decoded into the text, and long base64 runs that decode to text are scored too.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

SCREEN_VERSION = "heuristic-1"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class InjectionScore:
    """``score`` in 0..1 (higher: more likely an instruction aimed at a model); ``signals`` names
    the signals that fired, in the fixed order of ``SIGNALS``, for a reviewer to see why."""

    score: float
    signals: tuple[str, ...]


# Building blocks. Determiners and position words that may stand between "ignore" and "instructions".
_FILL = (r"(?:all|any|every|each|the|your|my|our|its|this|these|those|that|of|and|or|other|rest|remaining|given|"
         r"following|provided|default|current|existing|developer|safety|ethical|content|system|original|initial|old|earlier|"
         r"former|previous|prior|above|preceding|foregoing|aforementioned)")
# At least one of these must be present for the strong override: "ignore these instructions if you
# have already registered" is a human instruction; "ignore your/previous/all instructions" is not.
_POS = r"(?:all|any|your|previous|prior|above|preceding|earlier|foregoing|former|original|initial|system|developer)"
_ORDERS = (r"(?:instructions?|directions?|directives?|prompts?|rules|guidelines|commands?|guidance|orders|programming|"
           r"restrictions|constraints|policies|safeguards|filters|training|task)")
_DATA = r"(?:text|content|data|info|information|context|documents?|messages?|conversation|input|snippets?|everything)"
_AI = (r"(?:ai|a\.i\.|llms?|(?:large\s+)?language\s+models?|chat\s?bots?|chatgpt|gpt(?:-\d)?|claude|gemini|bard|"
       r"copilot|assistants?|ai\s+(?:assistants?|agents?|models?|systems?|tools?|readers?)|bots?|models?|agents?|"
       r"automated\s+(?:systems?|readers?|reviewers?|screening(?:\s+systems?)?|analysis(?:\s+software)?|tools?))")
_VERB_OUT = r"(?:say|print|output|write|respond|reply|answer|return|repeat|state)"
_QUOTE = r"[\"“”«'‘<`]"

# Trigger words for the prefilter (see _Rule), kept next to the patterns they stand for.
_T_IGNORE = "ignore,ignoring,disregard,disregarding,forget,override,overriding,bypass,neglect,discard,abandon,aside"
_T_RULES = ("instruction,instructions,direction,directions,directive,directives,prompt,prompts,rules,guidelines,"
            "command,commands,guidance,orders,programming,restrictions,constraints,policies,safeguards,filters,"
            "training,task")
_T_DATA = ("text,content,data,info,information,context,document,documents,message,messages,conversation,input,"
           "snippet,snippets,everything")
_T_AI = ("ai,llm,llms,language,chatbot,chatbots,chat,chatgpt,gpt,claude,gemini,bard,copilot,assistant,assistants,bot,"
         "bots,model,models,agent,agents,automated")
_T_SAY = "say,print,output,write,respond,reply,answer,return,repeat,state,tell,focus"


@dataclass(frozen=True)
class _Rule:
    """One weighted pattern, with a prefilter: ``triggers`` are groups of keys (a lower-case word, or
    a substring key from ``_substring_key``) of which every group must occur in the chunk before the
    regex runs. Every match of the pattern holds a key of each group, so the prefilter only saves
    time: the keys of a chunk are found once (a set of its words plus a scan for each substring
    key), rule checks are then set intersections, and most chunks give few rules a regex search."""

    signal: str
    weight: float
    triggers: tuple[frozenset[str], ...]
    pattern: re.Pattern[str]


# Substring triggers of all rules, each scanned for once per chunk.
_SUBSTRINGS: dict[str, str] = {}


def _substring_key(substring: str) -> str:
    # A NUL prefix keeps substring keys apart from words in the one set of keys of a chunk.
    key = "\0" + substring
    _SUBSTRINGS[substring] = key
    return key


def _rule(signal: str, weight: float, triggers: str, pattern: str) -> _Rule:
    """``triggers``: groups separated by ";", alternatives by ",". An ASCII word must occur as a word;
    anything else (a prefix marked ``ignor*``, punctuation, several words, non-Latin text) as a
    substring of the lower-cased, whitespace-collapsed chunk."""
    groups = []
    for group in triggers.split(";"):
        keys = set()
        for trigger in (t.strip() for t in group.split(",")):
            if trigger.isascii() and trigger.isalnum():
                keys.add(trigger)
            elif trigger:
                prefix = trigger.endswith("*") and trigger[:-1].isalnum()
                keys.add(_substring_key(trigger[:-1] if prefix else trigger))
        groups.append(frozenset(keys))
    return _Rule(signal, weight, tuple(groups), re.compile(pattern, re.IGNORECASE | re.MULTILINE))


# The weights are the tuned values (see the module docstring). Stronger rules of a signal first, so
# a signal already at its highest weight skips the weaker ones.
_RULES_AS_WRITTEN: tuple[_Rule, ...] = (
    # -- override: telling the model to drop what it was told.
    _rule("override", 0.8, f"{_T_IGNORE}; {_T_RULES}",
          rf"\b(?:ignore|ignoring|disregard|disregarding|forget|overrid(?:e|ing)|bypass|neglect|discard|abandon|"
          rf"set\s+aside)\s+(?:{_FILL}\s+){{0,3}}{_POS}\s+(?:{_FILL}\s+){{0,3}}{_ORDERS}\b"),
    _rule("override", 0.7, "ignore,disregard,forget; above,previous,preceding,prior,foregoing,earlier",
          r"\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?(?:the\s+|that\s+|what\s+(?:is|was)\s+)?"
          r"(?:above|previous|preceding|prior|foregoing|earlier)(?=\s*(?:[.,;:!)\]]|and\b|or\b|$))"),
    _rule("override", 0.7, "ignor*,игнорир,忽略,无视,無視,忘记,忘記,理会,忘れ",
          r"\bignore[zr]?\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|consignes|directives)\b|"
          r"\bignor[ae]\w*\s+(?:todas?\s+)?(?:las\s+|as\s+|le\s+|tutte\s+le\s+)?"
          r"(?:instrucciones|instruções|instrucoes|indicaciones|istruzioni|indicazioni)\b|"
          r"\bignorier\w*\s+(?:sie\s+)?(?:alle\s+)?(?:\w+\s+)?(?:anweisungen|instruktionen|befehle|regeln)\b|"
          r"игнорир\w*\s+(?:все\s+)?(?:\w+\s+)?(?:инструкци|указани|команд)|"
          r"(?:忽略|无视|無視|忘记|忘記|不要理会|不理会)[^。\n]{0,10}?(?:指令|指示|说明|說明|提示|规则|規則|命令)|"
          r"(?:指示|命令|指令)を?(?:すべて|全て)?(?:無視|忘れ)"),
    _rule("override", 0.6, "forget; everything,all",
          r"\bforget\s+(?:about\s+)?(?:everything|all)\s+(?:above|before|previously|"
          r"(?:that\s+)?(?:you|i|we)(?:'ve|\s+have|\s+were|\s+was)?\s+(?:been\s+)?(?:told|taught|instructed|said))"),
    _rule("override", 0.55, "ignore,disregard,forget; say,print,output,respond,reply,repeat",
          r"\b(?:ignore|disregard|forget)\b[^.!?\n]{0,60}?\band\s+(?:instead\s+|just\s+|only\s+|simply\s+)?"
          r"(?:say|print|output|respond|reply|repeat)\b"),
    _rule("override", 0.4, "ignore,disregard; this,these,that,those",
          rf"\b(?:ignore|disregard)\s+(?:this|these|that|those)\s+{_DATA}\b"),
    _rule("override", 0.55, f"ignore,disregard,forget,discard; {_T_DATA}",
          rf"\b(?:ignore|disregard|forget|discard)\s+(?:{_FILL}\s+){{0,3}}"
          rf"(?:{_POS}|rest|other|remaining)\s+(?:\w+\s+){{0,4}}{_DATA}\b"),
    _rule("override", 0.5, "stop,cease,halt,abort",
          r"\b(?:stop|cease|halt|abort)\s+(?:all\s+)?(?:summari[sz]ing|translating|"
          r"the\s+(?:current|previous|original)\s+task|what\s+you(?:'re|\s+are)\s+doing|"
          r"(?:your\s+)?(?:previous|current)\s+(?:task|instructions?))"),
    _rule("override", 0.5, "oubli*,olvida,esquece,vergiss,dimentica,забудь",
          r"\boublie[zr]?\s+tout\b|\bolvida\s+todo\b|\besquece\s+tudo\b|\bvergiss\s+alles\b|"
          r"\bdimentica\s+tutto\b|\bзабудь\w*\s+вс[её]\b"),
    _rule("override", 0.35, f"ignore,disregard; {_T_RULES}",
          rf"\b(?:ignore|disregard)\s+(?:the\s+|these\s+|those\s+|such\s+|content\s+|safety\s+)?{_ORDERS}\b"),
    # -- persona: a new identity or mode for the model.
    _rule("persona", 0.55, "you are,you're",
          r"\byou\s+are\s+(?:now|no\s+longer)\b(?!\s+(?:leaving|entering|ready|able|logged|signed|connected|"
          r"registered|subscribed|viewing|reading|listening|watching|in\s+the|on\s+the|at\s+the))|\byou(?:'re|\s+are)\s+(?:going|about)\s+to\s+"
          r"(?:act|play|be\s+an?|pretend|immerse|become|take\s+on)\b"),
    _rule("persona", 0.5, "from now on,you will,you must,you shall,you should",
          r"\bfrom\s+now\s+on\b[^.!?\n]{0,40}?\byou\b|\byou\s+(?:will|must|shall|should)\s+(?:now\s+)?"
          r"(?:act|behave|roleplay|role-play|pretend)\b"),
    _rule("persona", 0.5, "act as,behave as,respond as,answer as",
          r"\b(?:act|behave|respond|answer)\s+as\s+(?:if\s+you\s+(?:are|were)|though\s+you|an?\s+(?:unfiltered|"
          r"unrestricted|uncensored|evil|rogue|jailbroken|different|new|ai|assistant|chatbot|language))\b"),
    _rule("persona", 0.5, "maintenant,ahora eres,agora voc,du bist,ora sei,ты теперь,你现在是,你現在是,从现在开始,"
          "從現在開始,あなたは今",
          r"\btu\s+es\s+maintenant\b|\bvous\s+êtes\s+maintenant\b|\bahora\s+eres\b|\bagora\s+voc[eê]\s+[ée]\b|"
          r"\bdu\s+bist\s+(?:jetzt|nun|ab\s+sofort)\b|\bora\s+sei\b|\bты\s+теперь\b|你现在是|你現在是|从现在开始|"
          r"從現在開始|あなたは今"),
    _rule("persona", 0.45, "mode,do anything now,your new",
          r"\b(?:developer|dan|jailbreak|unrestricted|unfiltered|debug|admin|god)\s+mode\b|"
          r"\bdo\s+anything\s+now\b|\byour\s+new\s+(?:role|persona|identity|name|task|goal|objective|"
          r"instructions?|purpose|directive)\b"),
    _rule("persona", 0.5, "unrestricted,unfiltered,uncensored,jailbroken; model,ai,assistant,chatbot,version,llm",
          r"\b(?:unrestricted|unfiltered|uncensored|jailbroken)\s+(?:ai\s+)?(?:model|ai|assistant|chatbot|version|llm)\b"),
    _rule("persona", 0.35, "pretend,roleplay,role-play,role play",
          r"\bpretend\s+(?:to\s+be|(?:that\s+)?you\s+are|you're)\b|\b(?:roleplay|role-play|role\s+play)\s+as\b"),
    _rule("persona", 0.2, "from now on", r"\bfrom\s+now\s+on\b"),
    # -- role_tag: chat-template tokens and fake speaker or system headers.
    _rule("role_tag", 0.75, "<|,[inst,[/inst,<<sys,<</sys",
          r"<\|(?:im_start|im_end|endoftext|system|user|assistant|eot_id|start_header_id|end_header_id|"
          r"begin_of_text)\|>|\[/?inst\]|<</?sys>>"),
    _rule("role_tag", 0.6, "##", r"^[ \t>#*]*#{2,}\s*(?:instruction|system|response|input)s?\b"),
    _rule("role_tag", 0.6, "system,admin,developer,operator; message,instruction,prompt,override,note,command",
          r"\b(?:system|admin|developer|operator)\s+(?:message|instruction|prompt|override|note|command)\s*[:\]!-]"),
    _rule("role_tag", 0.55, "<,end of session,end of conversation",
          r"</?(?:system|instructions?|admin|sys|im_start|user_query|prompt)>|<\s*end\s+of\s+"
          r"(?:session|conversation|document|context|prompt)\s*>|\bend\s+of\s+(?:session|conversation)\b"),
    _rule("role_tag", 0.45, "system:,assistant:,user:,human:,ai:,gpt:,bot:,system :,assistant :,user :,human :",
          r"(?:^|[.!?\]>]\s+)[ \t>*]*(?:system|assistant|user|human|ai|gpt|chatgpt|bot)\s?:\s"),
    _rule("role_tag", 0.5, "[system],[admin",
          r"\[(?:system|admin)\]|\[(?:admin|system)\s+(?:request|message|override|command)\b"),
    _rule("role_tag", 0.35, "[system,[admin,[instruction,[sys,[assistant,--,==,**",
          r"\[(?:system|admin|instructions?|sys|assistant)\b[^\]\n]{0,30}\]|"
          r"(?:^|\n)\s*(?:-{2,}|={2,}|\*{2,})\s*(?:core|new|system|important|hidden|additional|legal)?\s*"
          r"(?:instructions?|amendment|override)\b"),
    # -- ai_address: a sentence addressed to the model reading the document.
    _rule("ai_address", 0.65, "if you are", rf"\bif\s+you\s+are\s+(?:an?\s+)?{_AI}\b"),
    _rule("ai_address", 0.65, f"note,message,attention,instruction,instructions,memo,reminder,notice,warning,hint,psa,"
          f"request; to,for; {_T_AI}",
          rf"\b(?:note|message|attention|instructions?|memo|reminder|notice|warning|hint|psa|request)\s+"
          rf"(?:to|for)\s+(?:any\s+|all\s+|the\s+)?{_AI}\b"),
    _rule("ai_address", 0.6, "dear,hey,hello,hi,attention,attn; ai,llm,chatgpt,gpt,assistant,chatbot,claude,gemini,"
          "bard,copilot,bing,model,language",
          r"\b(?:dear|hey|hello|hi|attention|attn)\s*,?\s+(?:ai|llm|chatgpt|gpt|assistant|chatbot|claude|"
          r"gemini|bard|copilot|bing|model|language\s+model)\s*[,!:.]"),
    _rule("ai_address", 0.55, f"{_T_AI}; please,kindly,note,you,ignore,do,don,always,never,remember,read",
          r"\b(?:ai\s+(?:assistants?|agents?|models?|readers?|systems?)|llms|language\s+models|chatbots|assistants)"
          r"\s*[:,]\s*(?:please|kindly|note|you\b|ignore|do\s+not|don't|always|never|remember|read)"),
    _rule("ai_address", 0.5, "for,to; automated,ai,llm",
          r"\b(?:for|to)\s+(?:the\s+|any\s+|all\s+)?(?:automated|ai|llm)\s+(?:screening|analysis|review|reviewers?|"
          r"readers?|systems?|tools?|software|agents?|assistants?|models?)\b[^.\n]{0,20}:"),
    _rule("ai_address", 0.6, f"{_T_AI}; reading,processing,summarizing,summarising,parsing,scanning,analyzing,"
          "analysing,ingesting,reviewing,evaluating",
          rf"\b{_AI}\s+(?:that\s+(?:is|are)\s+|who\s+(?:is|are)\s+)?(?:reading|processing|summari[sz]ing|"
          rf"parsing|scanning|analy[sz]ing|ingesting|reviewing|evaluating)\s+(?:this|these|the\s+following)\b"),
    _rule("ai_address", 0.5, "as a,as an,you are a; ai,language,llm,assistant,helpful,harmless,chatbot,large",
          r"\bas\s+an?\s+(?:ai|language\s+model|llm)\b(?!\s+(?:researcher|company|lab|startup|expert|engineer))|\byou\s+are\s+an?\s+(?:ai|helpful|harmless|"
          r"language\s+model|llm|assistant|chatbot|large\s+language)\b"),
    # -- output_control: dictating what the answer says.
    _rule("output_control", 0.5, "respond,reply,answer; only,just,simply,exclusively",
          r"\b(?:respond|reply|answer)\s+(?:only|just|simply|exclusively)\s+(?:with|using|that|by)\b"),
    _rule("output_control", 0.45, "respond,reply,answer; with,using",
          rf"\b(?:respond|reply|answer)\s+(?:with|using)\s+"
          rf"(?:only\s+)?(?:the\s+(?:following|word|phrase|text|sentence|string)|{_QUOTE}|yes\b|no\b|a\s+single)"),
    _rule("output_control", 0.45, "just,only,simply,instead; say,print,output,respond,reply,return,repeat",
          r"(?<!the )\b(?:just|only|simply|instead)\s*,?\s+(?:say|print|output|respond|reply|return|repeat)\b"),
    _rule("output_control", 0.5, "your; answer,response,reply,output,summary,message; begin,start,end,prefix,preface",
          r"\b(?:begin|start|end|prefix|preface)\s+your\s+(?:answer|response|reply|output|summary|message)\b"),
    _rule("output_control", 0.45, "print,output,repeat,say,return,display",
          rf"\b(?:print|output|repeat|say)\s*:?\s*{_QUOTE}|\b(?:output|print|say|repeat|return|display)\s+(?:only\s+)?"
          rf"(?:the\s+following|this\s+(?:exact\s+)?(?:text|sentence|phrase|string|message|link|url))\b"),
    _rule("output_control", 0.45, "your; answer,response,reply,output,summary,translation; must,should,shall,has,needs",
          r"\byour\s+(?:answer|response|reply|output|summary|translation)\s+(?:must|should|shall|has\s+to|needs\s+to)\b"),
    _rule("output_control", 0.4, "not,don,never; summarize,summarise,translate,evaluate,answer",
          r"\b(?:do\s+not|don't|never)\s+(?:summari[sz]e|translate|evaluate|answer\s+the)\b"),
    _rule("output_control", 0.4, f"instead,rather; {_T_SAY}",
          rf"\b(?:instead|rather)\s*,?\s+(?:you\s+)?(?:should\s+|must\s+|will\s+)?(?:{_VERB_OUT}|tell|"
          rf"focus\s+(?:only\s+|exclusively\s+)?on)\b"),
    _rule("output_control", 0.4, "tell; user,reader,human", r"\btell\s+the\s+(?:user|reader|human)\b"),
    _rule("output_control", 0.35, "focus; only,exclusively,solely",
          r"\bfocus\s+(?:only|exclusively|solely)\s+on\b"),
    # -- answer_hijack: "when asked about X, answer Y".
    _rule("answer_hijack", 0.6, "asked,questioned,queried,prompted,ask,asks,question,questions,query,queries; "
          "answer,respond,reply,say,state,tell,claim,"
          "insist,mention,output,print,recommend,report",
          r"\b(?:when|if|whenever|should)\s+(?:you\s+are\s+|you're\s+|anyone\s+|someone\s+|the\s+user\s+|"
          r"a\s+user\s+|users?\s+|people\s+)?(?:asked|questioned|queried|prompted|asks?|questions?|quer(?:y|ies))\b"
          r"[^.!?\n]{0,120}?[,:]\s*"
          r"(?:then\s+)?(?:please\s+|you\s+(?:must|should|will)\s+|always\s+|just\s+|simply\s+)?"
          r"(?:answer|respond|reply|say|state|tell|claim|insist|mention|output|print|recommend|report)\b"),
    _rule("answer_hijack", 0.6, "response,questions,queries,requests,question,query,request; answer,respond,reply,say,"
          "state,claim,insist,mention",
          r"\b(?:in\s+response\s+to|for)\s+(?:any\s+|all\s+)?(?:questions?|queries|requests?)\s+(?:about|on|"
          r"regarding|concerning)\b[^.!?\n]{0,80}?,\s*(?:always\s+|just\s+|simply\s+)?(?:answer|respond|reply|say|"
          r"state|claim|insist|mention)\b"),
    _rule("answer_hijack", 0.35, "if; user,human,customer,reader,anyone,someone; "
          "ask,asks,inquires,request,requests,wants",
          r"\bif\s+(?:the\s+|a\s+|any\s+)?(?:user|human|customer|reader|anyone|someone)\s+"
          r"(?:asks?|inquires|requests?|wants\s+to\s+know)\b"),
    _rule("answer_hijack", 0.35, "always,never; answer,respond,reply,claim,recommend",
          r"\b(?:always|never)\s+(?:answer|respond|reply|claim|recommend)\b"),
    # -- exfiltration: a link built to carry data out, or an order to send it.
    _rule("exfiltration", 0.65, "![",
          r"!\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]*(?:\{|\[|%7b|<|\$|data|info|secret|"
          r"prompt|history|chat|summary|conv|query|message|password|q=)"),
    _rule("exfiltration", 0.45, "send,post,forward,transmit,upload,submit,exfiltrate,leak,append,encode; "
          "http,https,www,url,link,address,endpoint",
          r"\b(?:send|post|forward|transmit|upload|submit|exfiltrate|leak|append|encode)\b[^.!?\n]{0,80}?"
          r"\b(?:to|at|into)\s+(?:this\s+(?:url|link|address|endpoint)|the\s+(?:url|link|endpoint|"
          r"following\s+(?:url|link|address))|https?://|www\.)"),
    _rule("exfiltration", 0.45, "render,display,show,include,insert,output; image,img",
          r"\b(?:render|display|show|include|insert|output)\s+(?:the\s+following\s+|this\s+)?(?:markdown\s+)?"
          r"(?:image|img)\b"),
    _rule("exfiltration", 0.25, "![", r"!\[[^\]\n]{0,100}\]\(\s*https?://"),
    _rule("exfiltration", 0.45, "markdown; image,images", r"\bmarkdown\s+images?\b"),
    _rule("user_data", 0.3, "conversation,chat,user; history,chat,conversation,messages,message,question,query,queries,"
          "data,email,password,name,address,credentials",
          r"\b(?:conversation|chat)\s+history\b|\bthe\s+user'?s\s+(?:chat|conversation|messages?|questions?|query|"
          r"queries|data|email|password|history|name|address|credentials)\b"),
    # -- secrecy: hiding the manipulation from the person.
    _rule("secrecy", 0.55, "not,don,never,without; tell,telling,inform,informing,reveal,revealing,mention,mentioning,"
          "disclose,disclosing,alert,alerting,let,letting,notify,notifying,show,showing; user,human,reader",
          r"\b(?:do\s+not|don't|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|reveal(?:ing)?|mention(?:ing)?|"
          r"disclos(?:e|ing)|alert(?:ing)?|let(?:ting)?|notify(?:ing)?|show(?:ing)?)\s+(?:this\s+|that\s+|it\s+|"
          r"anything\s+)?(?:to\s+)?(?:the\s+)?(?:user|human|reader)\b"),
    _rule("secrecy", 0.5, "not,don,never; mention,reveal,disclose,acknowledge,cite",
          r"\b(?:do\s+not|don't|never)\s+(?:mention|reveal|disclose|acknowledge|cite)\s+(?:this|these|that|"
          r"the\s+(?:above|previous|following|instructions?|source|note|message|prompt))\b"),
    _rule("secrecy", 0.5, "secret,hidden; user,reader,human,users,readers",
          r"\b(?:secret|hidden)\s+from\s+(?:the\s+)?(?:user|reader|human)s?\b"),
    _rule("secrecy", 0.35, "keep,remain,secretly,covertly,silently",
          r"\b(?:keep|remain)\s+(?:this|these)\s+(?:instructions?\s+|message\s+)?(?:secret|hidden|confidential)\b|"
          r"\b(?:secretly|covertly|silently)\s+(?:add|insert|include|append|send|change|replace|recommend)\b"),
    # -- prompt_leak: asking for the model's own instructions.
    _rule("prompt_leak", 0.65, "reveal,print,show,repeat,output,display,tell,give,share,leak,disclose,write,recite,"
          "dump; your,the; prompt,message,preprompt,pre,instructions",
          r"\b(?:reveal|print|show|repeat|output|display|tell\s+me|give\s+me|share|leak|disclose|write\s+out|"
          r"recite|dump)\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?(?:your|the)\s+(?:full\s+|entire\s+|original\s+|"
          r"initial\s+|hidden\s+|secret\s+|complete\s+|exact\s+|internal\s+)*(?:system\s+prompt|"
          r"system\s+message|initial\s+prompt|pre-?prompt|prompt\b|instructions\s+(?:you|above|given))"),
    _rule("prompt_leak", 0.55, "repeat,print,output; above,before,preceding,prior",
          r"\b(?:repeat|print|output)\s+(?:all\s+)?(?:the\s+)?(?:words|text|everything|lines?)\s+"
          r"(?:above|before|preceding|prior)\b"),
    _rule("prompt_leak", 0.55, "what; your; instructions,prompt",
          r"\bwhat\s+(?:were|are|was)\s+your\s+(?:original\s+|initial\s+)?(?:instructions|prompt)\b"),
    _rule("prompt_leak", 0.3, "system prompt", r"\bsystem\s+prompt\b"),
    # -- new_instructions: announcing replacement orders.
    _rule("new_instructions", 0.45, "new,updated,revised,real,actual,true,secret,hidden,override,priority,urgent,"
          "critical; instruction,instructions,directive,directives,task,orders,system,command,commands,objective",
          r"\b(?:new|updated|revised|real|actual|true|secret|hidden|override|priority|urgent|critical)\s+"
          r"(?:instructions?|directives?|task|orders|system\s+prompt|commands?|objective)\s*[:!]"),
    _rule("new_instructions", 0.45, "real,actual,true,new,only,primary,sole; task,job,goal,objective,mission,purpose,"
          "instruction",
          r"\b(?:your|the)\s+(?:real|actual|true|new|only|primary|sole)\s+(?:task|job|goal|objective|"
          r"mission|purpose|instruction)\s+(?:is|now\s+is|will\s+be)\b"),
    _rule("new_instructions", 0.45, "important,urgent,critical,attention,warning; :,!",
          r"\b(?:important|urgent|critical|attention|warning)\s*[:!]+\s*(?:ignore|disregard|forget|you\b|"
          r"do\s+not|don't|stop|override)"),
    _rule("new_instructions", 0.2, "follow,obey,execute,carry; instruction,instructions,command,commands,direction,"
          "directions,orders",
          r"\b(?:follow|obey|execute|carry\s+out)\s+(?:only\s+)?(?:these|the\s+following|my|the\s+new|"
          r"this)\s+(?:new\s+)?(?:instructions?|commands?|directions?|orders)\b"),
    _rule("new_instructions", 0.2, "your task is,comply,obey",
          r"\byour\s+task\s+is\s+(?:now\s+)?to\b|\bmust\s+(?:comply|obey)\b"),
    # -- encoded / hidden: payloads a human reader would not see.
    _rule("encoded", 0.55, "base64,base-64,rot13,rot-13,hex,binary,morse",
          r"\b(?:decode|decipher|translate)\b[^.\n]{0,40}\b(?:base64|base-64|rot13|rot-13|hex|binary|morse)\b"
          r"[^.\n]{0,60}\b(?:follow|execute|obey|do|perform|run|carry)"),
    _rule("hidden", 0.55, "visible,invisible",
          r"\bvisible\s+(?:only\s+)?to\s+(?:the\s+)?(?:ai|llms?|models?|assistants?|bots?|machines?)\b|"
          r"\binvisible\s+to\s+(?:humans?|people|readers?)\b"),
    _rule("hidden", 0.3, "white,hidden; text,instruction,instructions,prompt",
          r"\bwhite[-\s]text\b|\bhidden\s+(?:instructions?|prompt)\b"),
    _rule("hidden", 0.25, "<!--,display,visibility,font-size",
          r"<!--|\bdisplay\s*:\s*none\b|\bvisibility\s*:\s*hidden\b|\bfont-size\s*:\s*0(?:px|pt)?\b"),
)
_RULES = tuple(sorted(_RULES_AS_WRITTEN, key=lambda rule: -rule.weight))
SIGNALS: tuple[str, ...] = tuple(dict.fromkeys(rule.signal for rule in _RULES_AS_WRITTEN))
_ASCII_SUBSTRINGS = tuple((sub, key) for sub, key in _SUBSTRINGS.items() if sub.isascii())
_OTHER_SUBSTRINGS = tuple((sub, key) for sub, key in _SUBSTRINGS.items() if not sub.isascii())

# Zero-width characters used to split trigger words ("ig\u200bnore"); ZWNJ/ZWJ (\u200c, \u200d) are
# left alone because Persian and Indic scripts need them, and are not counted as hiding.
_ZERO_WIDTH = re.compile("[\u200b\u200e\u200f\u2060-\u2064\ufeff\u00ad]")
_ZERO_WIDTH_BETWEEN_LETTERS = re.compile(r"[^\W\d_][\u200b\u2060-\u2064\ufeff\u00ad][^\W\d_]")
_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]+")
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}")
_HIDDEN_ZERO_WIDTH_WEIGHT = 0.35
_HIDDEN_TAG_WEIGHT = 0.55
_ENCODED_TEXT_WEIGHT = 0.35


def _decoded_base64_texts(text: str) -> list[str]:
    """The long base64 runs of ``text`` that decode to readable text (a payload hidden from a
    human reader); runs that decode to bytes (hashes, keys, images) are ignored."""
    found = []
    for run in _BASE64_RUN.findall(text):
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
        if printable >= 0.95 * len(decoded) and decoded.count(" ") >= 3:
            found.append(decoded)
    return found


def _normalise(text: str, fired: dict[str, float]) -> str:
    """Undo the cheap ways of hiding text from a reader, recording each as a ``hidden`` signal."""
    if not text.isascii():
        if _TAG_CHARS.search(text):
            # Tag characters U+E0020..U+E007E mirror ASCII and render as nothing.
            smuggled = "".join(chr(ord(ch) - 0xE0000) if 0xE0020 <= ord(ch) <= 0xE007E else " "
                               for run in _TAG_CHARS.findall(text) for ch in run)
            text = _TAG_CHARS.sub(" ", text) + "\n" + smuggled
            fired["hidden"] = max(fired.get("hidden", 0.0), _HIDDEN_TAG_WEIGHT)
        if len(_ZERO_WIDTH_BETWEEN_LETTERS.findall(text)) >= 3:
            fired["hidden"] = max(fired.get("hidden", 0.0), _HIDDEN_ZERO_WIDTH_WEIGHT)
        text = unicodedata.normalize("NFKC", _ZERO_WIDTH.sub("", text))
    return text


_WORD = re.compile(r"\w+")


def _match_signals(text: str, fired: dict[str, float]) -> None:
    # Whitespace collapsed so that a trigger like "you are" also finds "you\n are".
    lowered = " ".join(text.lower().split())
    keys = set(_WORD.findall(lowered))
    keys.update(key for sub, key in _ASCII_SUBSTRINGS if sub in lowered)
    if not lowered.isascii():
        keys.update(key for sub, key in _OTHER_SUBSTRINGS if sub in lowered)
    for rule in _RULES:
        if fired.get(rule.signal, 0.0) >= rule.weight:
            continue
        for group in rule.triggers:
            if group.isdisjoint(keys):
                break
        else:
            if rule.pattern.search(text):
                fired[rule.signal] = rule.weight


def score_injection(text: str) -> InjectionScore:
    """Score ``text`` (one chunk) for instructions aimed at a model. Pure and deterministic."""
    fired: dict[str, float] = {}
    text = _normalise(text, fired)
    _match_signals(text, fired)
    if len(text) >= 40 and any(len(word) >= 40 for word in text.split()):
        for decoded in _decoded_base64_texts(text):
            fired["encoded"] = max(fired.get("encoded", 0.0), _ENCODED_TEXT_WEIGHT)
            _match_signals(_normalise(decoded, fired), fired)
    miss = 1.0
    for weight in fired.values():
        miss *= 1.0 - weight
    signals = tuple(name for name in SIGNALS if name in fired)
    return InjectionScore(score=round(1.0 - miss, 4), signals=signals)
